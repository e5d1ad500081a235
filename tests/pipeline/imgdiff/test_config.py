"""The recipe's `imgdiff` section: validated at the edge, one line naming the field."""

from __future__ import annotations

import pytest

from flows.recipe import parse_recipe
from pipeline.core.stage import ConfigError


@pytest.mark.parametrize("section, message", [
    ({"colour": 1}, "imgdiff.colour: unknown field"),
    ({"lower": 0.99, "upper": 0.98}, "imgdiff.lower: must be below imgdiff.upper"),
    ({"upper": 2}, "imgdiff.upper: must be a cosine"),
    ({"proposers": ["sam"]}, "imgdiff.proposers: unknown proposer 'sam'"),
    ({"captioner": "blip"}, "imgdiff.captioner: unknown captioner"),
    ({"model": "no-such-model"}, "imgdiff.model: unknown model"),
    ({"text_threshold": 0.3}, "imgdiff.text_threshold: matching crops to words needs an embed model"),
    ({"generate": {"steps": 0}}, "imgdiff.generate.steps: must be a positive integer"),
    ({"generate": {"strength": 1}}, "imgdiff.generate.strength: unknown field"),
    ({"generate": "tiny:txt2img"}, "imgdiff.generate: must be a mapping"),
])
def test_bad_fields_name_themselves(section, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
        parse_recipe({"imgdiff": section})
    assert "\n" not in str(err.value)


def test_the_embed_model_scores_pairs_unless_told_otherwise():
    recipe = parse_recipe({"embed": {"model": "foil-tiny-vit"}, "imgdiff": {"generate": {"pipeline": "tiny:txt2img"}}})
    assert recipe.imgdiff["model"] == "foil-tiny-vit" and recipe.imgdiff_generate == {"pipeline": "tiny:txt2img"}
    assert parse_recipe({"embed": {"model": "foil-tiny-vit"}, "imgdiff": {"model": None}}).imgdiff["model"] is None
    assert parse_recipe({}).imgdiff_generate is None
