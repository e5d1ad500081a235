"""Image hard negatives, mined: real emoji whose name is the negative caption, or the nearest
curated image to it above a floor; never the positive or its duplicate; every check counted."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from pipeline import steps
from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.runners import LocalRunner
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset
from pipeline.negatives.image import (
    CheckLimits, Evidence, ImageNegativesConfig, changed_area, nearest_allowed, normalise_caption, run_checks,
)
from tests.conftest import REPO, make_emoji_raw

KINDS = ["replace_object", "replace_attribute"]
# Emoji with natural minimal pairs: colours of one heart, man/woman/boy/girl, the same job.
PAIRED = {
    "red heart", "orange heart", "yellow heart", "green heart", "blue heart", "purple heart", "black heart",
    "white heart", "brown heart", "pink heart", "grey heart", "man", "woman", "boy", "girl", "baby", "child",
    "man cook", "woman cook", "man elf", "woman elf", "man farmer", "woman farmer", "older man", "older woman",
    "man frowning", "woman frowning", "red apple", "green apple", "left-facing fist", "right-facing fist",
}


@pytest.fixture(scope="module")
def emoji_ds(tmp_path_factory, emoji_dir):
    from pipeline.demo.sample import emoji_items

    items = [it for it in emoji_items(emoji_dir) if it.caption in PAIRED]
    ds = Dataset(tmp_path_factory.mktemp("neg_image") / "ds")
    make_emoji_raw(ds, emoji_dir, items, shards=2)
    runner = LocalRunner(progress=False)
    steps.score(ds, runner)
    steps.embed(ds, {"model": "foil-tiny-vit", "batch_size": 32}, runner)
    steps.dedup(ds, {"max_phash_distance": 2, "semantic_threshold": 1.0})
    steps.negatives(ds, {"kinds": KINDS}, runner)
    return ds


def _raw_images(ds: Dataset) -> dict[str, bytes]:
    raw = ds.table(S.RAW).read(columns=[S.SAMPLE_ID, S.IMAGE])
    return dict(zip(raw[S.SAMPLE_ID].to_pylist(), raw[S.IMAGE].to_pylist()))


def test_exact_match_mined_images_carry_the_negative_caption_and_never_the_positive(emoji_ds):
    ds = emoji_ds
    out = steps.neg_image(ds, {"kinds": KINDS, "margin": None, "min_similarity": -1.0}, LocalRunner(progress=False))
    rows = ds.table(S.NEG_IMAGE).read().to_pylist()
    cat = Catalog(ds)
    captions = {r["sample_id"]: r["caption"] for r in cat.query("select sample_id, caption from raw").to_pylist()}
    groups = {r["sample_id"]: r["duplicate_of"] for r in cat.query("select sample_id, duplicate_of from duplicates").to_pylist()}
    images = _raw_images(ds)
    n_text = cat.query(f"select count(*) n from negatives where kind in {tuple(KINDS)}").column("n")[0].as_py()
    assert len(rows) == n_text  # floor -1 and no margin: every text negative gets an image

    exact = [r for r in rows if "exact_caption" in r[S.CHECKS]]
    assert len(exact) >= 5, "hearts and man/woman pairs must give exact matches"
    for r in rows:
        assert r[S.METHOD] == "mined" and r[S.TRAINABLE] is True and r[S.PIPELINE] is None
        assert r[S.SOURCE_ID] != r[S.SAMPLE_ID]
        assert groups.get(r[S.SOURCE_ID], r[S.SOURCE_ID]) != groups.get(r[S.SAMPLE_ID], r[S.SAMPLE_ID])
        assert r[S.IMAGE] == images[r[S.SOURCE_ID]] and r[S.IMAGE] != images[r[S.SAMPLE_ID]]
    for r in exact:
        assert normalise_caption(captions[r[S.SOURCE_ID]]) == normalise_caption(r[S.NEG_CAPTION])

    per_kind = Counter(r[S.KIND] for r in exact)
    view = {r["kind"]: r for r in cat.query("select * from neg_image_counts").to_pylist()}
    assert {k: v["exact"] for k, v in view.items() if v["exact"]} == dict(per_kind)
    assert sum(v["rows"] for v in view.values()) == len(rows)
    stats = out["counts"]
    assert {k: stats.get(f"made:mined:{k}:exact_caption", 0) for k in per_kind} == dict(per_kind)
    print("exact matches per kind:", dict(per_kind), "of", Counter(r[S.KIND] for r in rows))

    from pipeline.report import build_summary, write_summary

    text = write_summary(ds, build_summary(ds))
    assert "| positive image | negative image | caption | negative caption | method |" in text
    shown = [line for line in text.splitlines() if line.startswith("| ![positive](")]
    assert shown
    for line in shown:
        for link in (part.split(")")[0] for part in line.split("](")[1:]):
            assert ds.fs.exists(ds.path(link)), link

    # Same config, same inputs: the committed table is kept as it is.
    again = steps.neg_image(ds, {"kinds": KINDS, "margin": None, "min_similarity": -1.0}, LocalRunner(progress=False))
    assert again["kept_unchanged"] is True


def test_the_floor_and_the_margin_reject_and_are_counted(emoji_ds):
    ds = emoji_ds
    runner = LocalRunner(progress=False)
    with pytest.raises(ConfigError, match="different neg_image config"):
        steps.neg_image(ds, {"kinds": KINDS, "margin": None, "min_similarity": 1.0}, runner)
    out = steps.neg_image(ds, {"kinds": KINDS, "margin": None, "min_similarity": 1.0}, runner, overwrite=True)
    rows = ds.table(S.NEG_IMAGE).read(columns=[S.CHECKS]).to_pylist()
    assert rows and all("exact_caption" in r[S.CHECKS] for r in rows)  # nothing reaches cosine 1: only exact names
    dropped = out["dropped"]["mined:below_floor"]
    assert dropped + len(rows) == out["rows_in"]
    drops = {(r["method"], r["reason"]): r["rows"] for r in Catalog(ds).query("select * from neg_image_drops").to_pylist()}
    assert drops[("mined", "below_floor")] == dropped

    out = steps.neg_image(ds, {"kinds": KINDS, "margin": 2.0, "min_similarity": -1.0}, runner, overwrite=True)
    assert ds.table(S.NEG_IMAGE).read().num_rows == 0  # no image beats its positive by a cosine of 2
    assert out["dropped"] == {"mined:margin": out["rows_in"]}


def test_nearest_neighbour_skips_excluded_rows_and_respects_the_floor():
    sims = np.array([0.95, 0.9, 0.5, 0.2], np.float32)
    nbrs = np.array([0, 1, 2, 3])
    excluded = {0: "positive", 1: "duplicate"}.get
    assert nearest_allowed(sims, nbrs, excluded, floor=0.4)[:2] == (2, pytest.approx(0.5))
    chosen, sim, passed_over = nearest_allowed(sims, nbrs, excluded, floor=0.6)
    assert chosen is None and sim == pytest.approx(0.5)  # the best allowed one is under the floor
    assert passed_over == {"positive": 1, "duplicate": 1}


def test_each_check_rejects_what_it_should():
    limits = CheckLimits(margin=0.05, min_area=0.02, max_area=0.5)
    good = Evidence(score_negative=0.40, score_positive=0.30, area=0.1, outside_change=0.0)
    assert run_checks("inpaint", good, limits)[0] is None
    assert run_checks("inpaint", Evidence(0.32, 0.30, 0.1, 0.0), limits)[0] == "margin"  # better, but not by the margin
    assert run_checks("p2p", Evidence(0.4, 0.3, 0.6, None), limits)[0] == "area"  # changed too much
    assert run_checks("p2p", Evidence(0.4, 0.3, 0.001, None), limits)[0] == "area"  # changed nothing to speak of
    assert run_checks("inpaint", Evidence(0.4, 0.3, 0.1, 3.0), limits)[0] == "outside_mask"
    assert run_checks("mined", Evidence(0.4, 0.3, None, None), limits) == (None, ["margin:0.100>=0.05"])
    failed, passed = run_checks("mined", Evidence(0.1, 0.3), CheckLimits(margin=None))
    assert failed is None and passed == []  # margin null: no check ran, none listed

    source = np.zeros((20, 20, 3), np.uint8)
    edited = source.copy()
    edited[5:10, 2:6] = 200
    area, box = changed_area(source, edited)
    assert area == pytest.approx(20 / 400) and box == [2, 5, 6, 10]
    assert changed_area(source, source) == (0.0, None)


def test_bad_settings_and_missing_inputs_fail_with_one_line(tmp_path, emoji_dir):
    for section, match in (
        ({"kinds": ["shuffle_trigrams"]}, "neg_image.kinds"),
        ({"methods": ["dream"]}, "neg_image.methods"),
        ({"min_similarity": 3}, "neg_image.min_similarity"),
        ({"colour": 1}, "neg_image.colour: unknown field"),
    ):
        with pytest.raises(ConfigError, match=match):
            ImageNegativesConfig.from_dict(section)
    from pipeline.demo.sample import emoji_items

    ds = Dataset(tmp_path / "ds")
    make_emoji_raw(ds, emoji_dir, emoji_items(emoji_dir)[:3], shards=1)
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "neg-image", "--dataset", str(ds.root), "--recipe", "demo"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"foil neg-image: error: neg_image needs embeddings: run `foil embed --dataset {ds.url}` first"]
    assert not ds.table(S.NEG_IMAGE).exists()
