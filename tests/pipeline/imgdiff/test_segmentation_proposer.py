"""A local semantic-segmentation model as a proposer: a tiny SegFormer (random weights) built
from its config and saved as a folder, then named in `imgdiff.proposers`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.stage import ConfigError
from pipeline.imgdiff.areas import DifferenceAreaGenerator, SegmentationProposer, proposer
from pipeline.imgdiff.filters import PixelScorer
from pipeline.imgdiff.stage import ImgDiffStep


@pytest.fixture(scope="module")
def tiny_segmenter(tmp_path_factory):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    folder = tmp_path_factory.mktemp("segmenter")
    config = SegformerConfig(num_encoder_blocks=1, depths=[1], sr_ratios=[1], hidden_sizes=[16], patch_sizes=[7], strides=[4],
                             num_attention_heads=[1], mlp_ratios=[2], decoder_hidden_size=16, num_labels=4)
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(config).eval()
    model.save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder, model


def _pair():
    rng = np.random.default_rng(1)
    a = np.full((96, 96, 3), 200, np.uint8)
    a[20:50, 10:40] = (200, 30, 30)
    a[60:90, 55:85] = (30, 30, 200)
    b = a.copy()
    b[20:50, 10:40] = (30, 200, 30)
    return np.clip(a + rng.normal(0, 2, a.shape), 0, 255).astype(np.uint8), np.clip(b + rng.normal(0, 2, b.shape), 0, 255).astype(np.uint8)


def test_boxes_are_the_models_segments_less_the_background(tiny_segmenter):
    folder, model = tiny_segmenter
    a, b = _pair()
    seg = proposer(str(folder))
    assert isinstance(seg, SegmentationProposer)
    boxes = seg.propose(a, b, np.zeros(a.shape[:2], bool))

    # the class maps, asked of the saved model directly through transformers
    from scipy import ndimage
    from transformers import SegformerImageProcessor

    pixels = SegformerImageProcessor.from_pretrained(folder)(images=[a, b], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(model(pixel_values=pixels).logits, size=(96, 96), mode="bilinear", align_corners=False)
    expected = []
    for labels in logits.argmax(1).numpy():
        border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        for value in sorted(set(np.unique(labels)) - {np.bincount(border).argmax()}):
            found, _ = ndimage.label(labels == value, structure=np.ones((3, 3), bool))
            expected += [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(found) if s is not None]
    assert boxes == list(dict.fromkeys(expected)) and boxes  # the random model does segment something


def test_the_generator_and_the_recipe_take_a_model_folder(tiny_segmenter):
    folder, _ = tiny_segmenter
    a, b = _pair()
    found = DifferenceAreaGenerator(proposers=["difference", str(folder)]).find(a, b, PixelScorer())
    assert found.candidates > 1 and found.boxes  # the segments join the difference's candidates, then the crop filter
    assert ImgDiffStep.from_params({"proposers": ["difference", str(folder)]}, progress=False).config()["proposers"] == ["difference", str(folder)]


def test_a_folder_that_is_no_model_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"imgdiff.proposers: .*: not a loadable segmentation model"):
        proposer(str(tmp_path)).propose(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), bool))
