"""Dedup: exact, near and semantic duplicates point at the row they duplicate, and the curated
view removes them with the kind as the reason."""

from __future__ import annotations

import io
import random

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageFilter

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.curate.dedup import DedupConfig, dedup, near_pairs, semantic_pairs
from pipeline.core.runners import LocalRunner
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset, shard_name
from pipeline.stages import stage_class


def test_near_pairs_finds_every_pair_within_the_distance():
    rng = random.Random(0)
    hashes = [rng.getrandbits(64) for _ in range(300)]
    hashes += [h ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for h in hashes[:50]]  # <= 2 bits away
    found = {(i, j) for i, j, _ in near_pairs(hashes, 3)}
    brute = {(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes)) if (hashes[i] ^ hashes[j]).bit_count() <= 3}
    assert found == brute and len(brute) >= 50


def test_semantic_pairs_within_clusters():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16))
    twins = base[:10] + rng.normal(scale=0.01, size=(10, 16))
    x = np.concatenate([base, twins])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pairs = {(i, j) for i, j, _ in semantic_pairs(x, 0.99, cluster_size=10)}
    assert {(i, 40 + i) for i in range(10)} <= pairs
    assert all(j - i == 40 for i, j in pairs)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_dedup_marks_exact_and_near_copies_and_the_view_removes_them(tmp_path, emoji_dir):
    from pipeline.demo.sample import emoji_items

    ds = Dataset(tmp_path / "ds")
    rows = {name: [] for name in S.RAW_SCHEMA.names}
    originals = emoji_items(emoji_dir)[100:1300:100]  # twelve unlike emoji: animals, food, places, ...
    items = [(it.caption, (emoji_dir / "img/google/64" / it.image).read_bytes()) for it in originals]
    apple = Image.open(emoji_dir / "img/google/64" / originals[3].image).convert("RGBA")  # keep its transparency
    items.append(("exact copy", items[3][1]))
    items.append(("blurred copy", _png(apple.filter(ImageFilter.GaussianBlur(0.6)))))
    for i, (caption, blob) in enumerate(items):
        url = f"http://h/{i}.png"
        for col, value in ((S.SAMPLE_ID, S.sample_id(url, caption)), (S.URL, url), (S.CAPTION, caption), (S.STATUS, "success"), (S.IMAGE, blob)):
            rows[col].append(value)
        for col in (S.ERROR, S.ERROR_KIND, S.WIDTH, S.HEIGHT, S.ORIGINAL_WIDTH, S.ORIGINAL_HEIGHT, S.SHA256):
            rows[col].append(None)
    ds.table(S.RAW).write_shard(shard_name(0), pa.table(rows, schema=S.RAW_SCHEMA))
    ds.table(S.RAW).write_manifest("crawl", {}, [S.URLS])
    LocalRunner(progress=False).run(stage_class("score"), {}, ds, S.RAW, S.SCORES)

    report = dedup(ds, DedupConfig(max_phash_distance=6))
    assert report["semantic_pass"].startswith("skipped") and report["semantic"] == 0
    dupes = {r["sample_id"]: r for r in ds.table("duplicates").read().to_pylist()}
    original_id, exact_id, blur_id = rows[S.SAMPLE_ID][3], rows[S.SAMPLE_ID][12], rows[S.SAMPLE_ID][13]
    group = sorted([original_id, exact_id, blur_id])
    assert set(dupes) == set(group[1:])  # only the two copies (or the original) are duplicates
    assert all(dupes[s]["duplicate_of"] == group[0] for s in group[1:])
    same_bytes = {original_id, exact_id}
    for member in group[1:]:  # the kind is the member's relation to the row kept
        expected = "exact" if {member, group[0]} <= same_bytes else "near"
        assert dupes[member]["kind"] == expected
        assert 0 <= dupes[member]["distance"] <= (0 if expected == "exact" else 6)  # near: pHash bits apart
    kinds = [dupes[m]["kind"] for m in group[1:]]
    assert (report["exact"], report["near"]) == (kinds.count("exact"), kinds.count("near"))

    cat = Catalog(ds)
    cat.refresh()
    curation = {r["sample_id"]: r for r in cat.query("select sample_id, drop_reason, duplicate_of from curation").to_pylist()}
    assert curation[group[0]]["drop_reason"] is None
    assert {curation[s]["drop_reason"] for s in group[1:]} <= {"duplicate:sha256", "duplicate:near", "duplicate:exact"}
    assert cat.query("select count(*) n from curated").column("n")[0].as_py() == 12


def test_bad_dedup_config_names_the_field():
    with pytest.raises(ConfigError, match=r"dedup\.max_phash_distance: must be an integer from 0 to 16"):
        DedupConfig.from_dict({"max_phash_distance": 40})
    with pytest.raises(ConfigError, match=r"dedup\.threshold: unknown field"):
        DedupConfig.from_dict({"threshold": 0.9})


def test_colour_variants_are_not_near_duplicates(tmp_path, emoji_dir):
    from pipeline.demo.sample import emoji_items
    from tests.conftest import make_emoji_raw

    hearts = {it.caption: it for it in emoji_items(emoji_dir) if it.caption in ("blue heart", "green heart", "yellow heart", "purple heart")}
    assert len(hearts) == 4
    ds = Dataset(tmp_path / "ds")
    make_emoji_raw(ds, emoji_dir, list(hearts.values()), shards=1)
    LocalRunner(progress=False).run(stage_class("score"), {}, ds, S.RAW, S.SCORES)
    report = dedup(ds, DedupConfig(max_phash_distance=6))
    assert report["near"] == 0 and report["near_pairs_rejected_by_colour"] >= 1  # same shape, other colour
    assert ds.table("duplicates").read().num_rows == 0
