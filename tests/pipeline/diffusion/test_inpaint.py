"""Inpainting composites onto the source, box masks, and cross-attention grounding maps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.core.stage import ConfigError
from pipeline.diffusion import GroundingQuery, box_mask, composite, cross_attention_maps, ground, inpaint
from pipeline.diffusion.inpaint import dilate, pipeline_output_only


def scene(size: int = 32, seed: int = 0) -> Image.Image:
    """A flat background with a red square and a little noise: a real-looking input, not a blank."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), (40, 120, 200), dtype=np.int16)
    img[8:20, 10:22] = (220, 30, 30)
    img += rng.integers(-6, 7, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def test_box_mask_shape_and_clipping():
    mask = box_mask((40, 30), (5, 6, 15, 10))  # (width, height), [x0, y0, x1, y1)
    assert mask.shape == (30, 40) and mask.dtype == bool
    assert mask.sum() == 10 * 4 and mask[6, 5] and mask[9, 14] and not mask[10, 14] and not mask[6, 15]
    clipped = box_mask((40, 30), (-5, -5, 100, 3))
    assert clipped.sum() == 40 * 3
    assert box_mask((40, 30), (50, 50, 60, 60)).sum() == 0


def test_composite_keeps_every_pixel_outside_the_dilated_mask():
    source, generated = scene(), Image.new("RGB", (32, 32), (0, 255, 0))
    mask = box_mask((32, 32), (12, 12, 18, 18))
    out = np.asarray(composite(source, generated, mask, dilate_px=2))
    grown = dilate(mask, 2)
    assert grown.sum() == 10 * 10  # 6 px box grown by 2 on each side
    assert np.array_equal(out[~grown], np.asarray(source)[~grown])
    assert (out[grown] == (0, 255, 0)).all()
    with pytest.raises(ConfigError, match="mask"):
        composite(source, generated, np.zeros((8, 8), bool), 2)


def test_inpaint_output_equals_source_outside_mask_while_the_pipeline_alone_does_not(tiny_inpaint):
    images = [scene(32, 0), scene(32, 1)]
    masks = [box_mask((32, 32), (8, 8, 20, 20)), box_mask((32, 32), (4, 16, 28, 28))]
    out = inpaint(tiny_inpaint, images, masks, ["a green square", "a blue ball"], seeds=[1, 2], steps=2, dilate_px=2)
    for image, mask, result in zip(images, masks, out):
        assert result.size == image.size
        outside = ~dilate(mask, 2)
        assert np.array_equal(np.asarray(result)[outside], np.asarray(image)[outside])
        assert not np.array_equal(np.asarray(result)[mask], np.asarray(image)[mask])  # it repainted inside
    # Why the composite is needed: the pipeline's own output moves pixels outside the mask too.
    raw = pipeline_output_only(tiny_inpaint, images[0], masks[0], "a green square", seed=1, steps=2)
    outside = ~dilate(masks[0], 2)
    change = np.abs(np.asarray(raw, dtype=np.float32) - np.asarray(images[0], dtype=np.float32))[outside] / 255.0
    assert change.max() > 0.2


def test_inpaint_refuses_a_txt2img_pipeline_and_mismatched_masks(tiny_txt2img, tiny_inpaint):
    with pytest.raises(ConfigError, match="not an inpainting"):
        inpaint(tiny_txt2img, [scene()], [box_mask((32, 32), (0, 0, 4, 4))], ["x"], [0], steps=1)
    with pytest.raises(ConfigError, match="mask 0"):
        inpaint(tiny_inpaint, [scene()], [np.zeros((4, 4), bool)], ["x"], [0], steps=1)


def test_cross_attention_map_shape_range_and_not_constant(tiny_txt2img):
    prompt = "a red square on blue"
    image = scene(32).resize((40, 24))
    heat = cross_attention_maps(tiny_txt2img, image, prompt, token_span=(2, 5), seed=0, size=16)
    assert heat.shape == (24, 40) and heat.dtype == np.float32
    assert heat.min() == 0.0 and heat.max() == pytest.approx(1.0)
    assert heat.std() > 0.01
    other = cross_attention_maps(tiny_txt2img, image, prompt, token_span=(13, 17), seed=0, size=16)  # "blue"
    assert not np.allclose(heat, other)  # the map depends on which words are asked about
    with pytest.raises(ConfigError, match="token_span"):
        cross_attention_maps(tiny_txt2img, image, prompt, token_span=(1, 2), seed=0, size=16)  # a space


def test_grounding_registry(tiny_txt2img):
    image = scene(32)
    mask = ground("box", GroundingQuery(image=image, box=(2, 3, 10, 12)))
    assert mask.shape == (32, 32) and mask.sum() == 8 * 9
    heat_mask = ground("cross_attention", GroundingQuery(image=image, prompt="a red square", token_span=(2, 12), threshold=0.5), tiny_txt2img)
    assert heat_mask.dtype == bool and heat_mask.shape == (32, 32) and 0 < heat_mask.sum() < 32 * 32
    with pytest.raises(ConfigError, match="neg_image.grounding: unknown grounding 'sam'"):
        ground("sam", GroundingQuery(image=image))
    with pytest.raises(ConfigError, match="no box"):
        ground("box", GroundingQuery(image=image))
