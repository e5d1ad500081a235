"""Real pairs: Noto emoji and their skin-tone or colour variants, from the demo's sample."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.demo.sample import IMAGE_SUBDIR
from pipeline.imgdiff.areas import DifferenceAreaGenerator, difference_map, region_agreement
from pipeline.imgdiff.emoji_pairs import emoji_variant_pairs
from pipeline.imgdiff.filters import PixelScorer
from pipeline.models.images import on_white

# Pixels that differ at all (PNG is lossless): the true changed region of a real pair.
VISIBLE = 8 / 255


def test_pairs_are_variants_with_captions_that_differ(emoji_dir):
    pairs = emoji_variant_pairs(emoji_dir)
    kinds = {p["kind"] for p in pairs}
    assert kinds == {"skin_tone", "colour"}
    assert all(p["caption_a"] != p["caption_b"] and p["image_a"] != p["image_b"] for p in pairs)
    captions = {(p["caption_a"], p["caption_b"]) for p in pairs}
    assert ("pink heart", "blue heart") in captions
    assert ("waving hand sign", "waving hand sign, dark skin tone") in captions


def test_union_of_boxes_covers_the_pixels_that_differ(emoji_dir):
    """Every third pair of all 1,683 (the measured medians over all of them are in the report)."""
    generator, scorer = DifferenceAreaGenerator(), PixelScorer()
    coverage, iou, kinds = [], [], set()
    for p in emoji_variant_pairs(emoji_dir)[::3]:
        a, b = (np.asarray(on_white(Image.open(emoji_dir / IMAGE_SUBDIR / p[k]))) for k in ("image_a", "image_b"))
        truth = difference_map(a, b) > VISIBLE
        found = generator.find(a, b, scorer)
        if not truth.any():  # a few variants are drawn identically
            assert found.boxes == []
            continue
        c, i = region_agreement(found.boxes, truth)
        coverage.append(c)
        iou.append(i)
        kinds.add(p["kind"])
    assert kinds == {"skin_tone", "colour"} and len(coverage) > 500
    assert np.median(coverage) >= 0.97  # measured 0.992 over all pairs
    assert np.median(iou) >= 0.92  # measured 0.949 over all pairs
