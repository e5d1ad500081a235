"""The Difference Area Generator scored against the procedural renderer's known boxes."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.stage import ConfigError
from pipeline.imgdiff.areas import BOX_CROPS_ALIKE, BOX_OVER_LIMIT, BOX_TOO_SMALL, DifferenceAreaGenerator, box_iou, merge_close
from pipeline.imgdiff.filters import PixelScorer
from pipeline.imgdiff.synthetic import render_pair


def test_top_box_matches_the_true_box_on_200_rendered_pairs():
    rng = np.random.default_rng(0)
    generator, scorer = DifferenceAreaGenerator(), PixelScorer()
    ious, changes = [], set()
    for _ in range(200):
        pair = render_pair(rng)
        changes.add(pair.change)
        found = generator.find(pair.image_a, pair.image_b, scorer)
        ious.append(box_iou(found.boxes[0], pair.box) if found.boxes else 0.0)
        assert found.scores == sorted(found.scores, reverse=True)  # most different first
    assert changes == {"recolour", "replace"}
    assert np.mean(np.array(ious) >= 0.9) >= 0.95


def test_more_noise_with_a_threshold_above_it_still_finds_the_change():
    rng = np.random.default_rng(1)
    generator, scorer = DifferenceAreaGenerator(pixel_threshold=0.2), PixelScorer()
    ious = []
    for _ in range(50):
        pair = render_pair(rng, noise=8.0)
        found = generator.find(pair.image_a, pair.image_b, scorer)
        ious.append(box_iou(found.boxes[0], pair.box) if found.boxes else 0.0)
    assert np.mean(np.array(ious) >= 0.9) >= 0.95


def test_identical_pairs_get_no_box():
    rng = np.random.default_rng(2)
    generator, scorer = DifferenceAreaGenerator(), PixelScorer()
    for _ in range(50):
        pair = render_pair(rng, change="identical")  # each image still has its own noise
        assert pair.box is None
        assert generator.find(pair.image_a, pair.image_b, scorer).boxes == []


def test_segmenting_each_image_alone_needs_the_crop_filter():
    """`regions` proposes every object of both images; only the changed one has differing crops."""
    rng = np.random.default_rng(3)
    scorer = PixelScorer()
    generator = DifferenceAreaGenerator(proposers=("regions",))
    top_ok, rejected = 0, 0
    for _ in range(40):
        pair = render_pair(rng, objects=4)
        found = generator.find(pair.image_a, pair.image_b, scorer)
        rejected += found.rejected[BOX_CROPS_ALIKE]
        top_ok += bool(found.boxes) and box_iou(found.boxes[0], pair.box) >= 0.9
        assert found.candidates >= 4  # the unchanged objects were proposed too
    assert rejected >= 40 * 3 * 0.9  # about three unchanged objects per pair removed by their crops
    assert top_ok >= 36


def test_small_boxes_are_skipped_and_the_count_is_capped():
    a = np.full((100, 100, 3), 255, np.uint8)
    b = a.copy()
    b[10:14, 10:15] = 0  # 20 px: more than a speck, less than 10000 / 400
    for i in range(5):
        b[40:60, 5 + 19 * i : 15 + 19 * i] = 0  # five 10 x 20 changes, far enough apart not to merge
    found = DifferenceAreaGenerator(max_boxes=3, min_area_fraction=1 / 400).find(a, b, PixelScorer())
    assert found.candidates == 6 and found.rejected[BOX_TOO_SMALL] == 1
    assert len(found.boxes) == 3 and found.rejected[BOX_OVER_LIMIT] == 2
    assert all((x1 - x0, y1 - y0) == (10, 20) for x0, y0, x1, y1 in found.boxes)


def test_merge_close_joins_pieces_of_one_change():
    assert merge_close([(0, 0, 10, 10), (12, 0, 20, 10), (50, 50, 60, 60)], gap=3) == [(0, 0, 20, 10), (50, 50, 60, 60)]


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="imgdiff.proposers: unknown proposer 'sam'"):
        DifferenceAreaGenerator(proposers=("sam",))
    with pytest.raises(ConfigError, match="imgdiff.max_boxes"):
        DifferenceAreaGenerator(max_boxes=0)
