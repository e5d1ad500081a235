"""Score first, decide later: curation recipes (DataComp's baselines among them) only recreate views.

A second `curate` with another recipe must read scores, not images: the test removes every image
byte from `raw` after scoring and gets the same curated rows, in a fraction of the scoring time.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import schema as S
from pipeline import steps
from pipeline.core.catalog import Catalog
from flows.recipe import builtin_recipes, load_recipe
from pipeline.core.runners import LocalRunner
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset
from tests.conftest import make_emoji_raw


def _curated(ds: Dataset) -> set[str]:
    return set(Catalog(ds).query("select sample_id from curated").column(0).to_pylist())


def test_datacomp_recipes_rethreshold_from_scores_alone(tmp_path, emoji_dir):
    from pipeline.demo.sample import EmojiItem, emoji_items

    items = emoji_items(emoji_dir)[:300]
    junk = [EmojiItem(image=items[i].image, caption=c, category="junk") for i, c in enumerate(["IMG_2031.jpg", "click here", "https://example.com/a.png", "ein roter Apfel auf dem Tisch"])]
    ds = Dataset(tmp_path / "ds")
    make_emoji_raw(ds, emoji_dir, items + junk, shards=3)
    runner = LocalRunner(progress=False)
    start = time.perf_counter()
    steps.score(ds, runner)
    steps.embed(ds, {"model": "foil-tiny-vit", "batch_size": 64}, runner)
    scoring_seconds = time.perf_counter() - start

    scores = {r["caption_flag"] for r in Catalog(ds).query("select caption_flag from scores").to_pylist()}
    assert {"filename", "boilerplate", "url", None} <= scores
    german = Catalog(ds).query("select s.language from scores s join raw r using (sample_id) where r.caption like 'ein roter%'")
    assert german.column(0).to_pylist() == ["de"]

    funnel = {r["reason"]: r["rows"] for r in steps.curate(ds, load_recipe("datacomp-clip-score-fraction").curate)}
    assert abs(funnel["kept"] - 0.3 * 304) <= 3  # the top 30% of the pool by CLIP score
    fraction_rows = _curated(ds)

    # Take every image byte out of raw: curation must not need them.
    for path in sorted((tmp_path / "ds" / "raw").glob("part-*.parquet")):
        table = pq.read_table(path)
        table = table.set_column(table.schema.get_field_index(S.IMAGE), S.IMAGE, pa.nulls(table.num_rows, pa.binary()))
        pq.write_table(table, path)
    start = time.perf_counter()
    funnel = {r["reason"]: r["rows"] for r in steps.curate(ds, load_recipe("datacomp-clip-score-fraction").curate)}
    again_seconds = time.perf_counter() - start
    assert _curated(ds) == fraction_rows
    assert again_seconds < scoring_seconds / 5, (again_seconds, scoring_seconds)

    # The other baselines, from the same scores: each funnel names its reasons.
    threshold = {r["reason"]: r["rows"] for r in steps.curate(ds, load_recipe("datacomp-clip-score-threshold").curate)}
    basic = {r["reason"]: r["rows"] for r in steps.curate(ds, load_recipe("datacomp-basic").curate)}
    assert basic["too_small"] == 304  # emoji are 64 px, under DataComp's 200 (the first rule that fails)
    combined = {r["reason"]: r["rows"] for r in steps.curate(ds, {**load_recipe("datacomp-combined").curate, "min_width": 32, "min_height": 32, "min_caption_words": 1, "min_caption_chars": 1})}
    assert combined["caption:filename"] == 1 and combined["caption:url"] == 1 and combined["caption:boilerplate"] == 1
    assert combined["not_english"] >= 1
    assert combined["kept"] < funnel["kept"]
    assert sum(threshold.values()) == sum(basic.values()) == 304


def test_builtin_recipes_are_listed_and_unknown_names_say_so():
    assert {"demo", "datacomp-basic", "datacomp-clip-score-fraction", "datacomp-clip-score-threshold", "datacomp-combined"} <= set(builtin_recipes())
    with pytest.raises(ConfigError, match="no such recipe file .*datacomp-basic"):
        load_recipe("datacomp-basik")
