from __future__ import annotations

import pytest

from flows.recipe import load_recipe, parse_recipe
from pipeline.core.stage import ConfigError


def test_builtin_demo_recipe_is_valid():
    recipe = load_recipe(None)
    assert recipe.runner_kind == "ray"
    assert recipe.crawl_params["image_size"] == 64
    assert recipe.train["model"] == "foil-tiny-vit"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"crawll": {}}, r"crawll: unknown recipe section"),
        ({"runner": {"kind": "spark"}}, r"runner\.kind: 'spark' is not one of ray, local"),
        ({"runner": {"retries": -1}}, r"runner\.retries: must be a non-negative integer"),
        ({"crawl": {"params": {"image_size": 0}}}, r"crawl\.image_size: must be a positive integer"),
        ({"crawl": {"shard_rows": "many"}}, r"crawl\.shard_rows: must be a positive integer"),
        ({"crawl": {"shard_by_host": "yes"}}, r"crawl\.shard_by_host: must be true or false"),
        ({"crawl": {"paramz": {}}}, r"crawl\.paramz: unknown field"),
        ({"curate": {"min_width": "wide"}}, r"curate\.min_width: must be a number"),
        ({"negatives": {"kinds": ["replace_flavour"]}}, r"negatives\.kinds: unknown kind 'replace_flavour'"),
        ({"export": {"eval_percent": 100}}, r"export\.eval_percent"),
        ({"train": {"stepz": 3}}, r"train\.stepz: unknown field"),
        ({"train": {"steps": 0}}, r"train\.steps: must be a positive integer"),
        ({"train": {"model": "ViT-Z/99"}}, r"train\.model: unknown model 'ViT-Z/99'"),
        ({"train": {"workers": 0}}, r"train\.workers: must be a positive integer"),
        ({"train": {"loss": "infonce"}}, r"train\.loss: 'infonce' is not one of clip, siglip"),
        ({"train": {"loss": "siglip"}}, r"train\.loss: siglip needs a model with init_logit_bias; foil-tiny-vit has none"),
        ([1, 2], r"a recipe is a mapping"),
    ],
)
def test_bad_fields_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe(data)


def test_bad_yaml_points_at_the_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("crawl:\n  params: {image_size: 64\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line \d+, column \d+\)"):
        load_recipe(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")
