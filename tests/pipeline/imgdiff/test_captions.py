"""Difference captions from the template: object pair and box position."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.stage import ConfigError
from pipeline.imgdiff.captions import TemplateCaptioner, captioner, differing_words, where, with_article


def test_where_names_the_grid_cell():
    assert where((0, 40, 20, 60), 100, 100) == "on the left"
    assert where((80, 0, 100, 20), 100, 100) == "at the top right"
    assert where((40, 40, 60, 60), 100, 100) == "in the centre"
    assert where((40, 80, 60, 100), 100, 100) == "at the bottom"
    assert where((0, 0, 95, 95), 100, 100) == "across the image"


def test_differing_words():
    assert differing_words("a red apple on a table", "a green apple on a table") == ("red apple", "green apple")
    assert differing_words("pink heart", "blue heart") == ("pink heart", "blue heart")
    assert differing_words("a cat on a sofa", "a dog on a sofa") == ("cat", "dog")
    # words only added on one side: the captions themselves
    assert differing_words("waving hand sign", "waving hand sign, dark skin tone") == ("waving hand sign", "waving hand sign, dark skin tone")


def test_template_says_what_is_where_in_each_image():
    image = np.zeros((90, 90, 3), np.uint8)
    text = TemplateCaptioner().caption(image, image, [(0, 30, 30, 60), (60, 0, 90, 30)], "red apple", "green apple")
    assert text == "on the left: a red apple in the first image, a green apple in the second; also changed at the top right"
    assert TemplateCaptioner().caption(image, image, [], "apple", "egg") == ""
    assert with_article("egg") == "an egg" and with_article("the cat") == "the cat"


def test_unknown_captioner_is_a_one_line_error():
    with pytest.raises(ConfigError, match="imgdiff.captioner: unknown captioner 'blip'"):
        captioner("blip")
