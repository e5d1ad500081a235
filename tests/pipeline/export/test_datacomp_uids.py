"""DataComp interop against a real crawl: a DataComp-style url list (uid, url, text and the pool's
precomputed CLIP scores) served from a loopback HTTP server, crawled with `--keep-columns`, curated
on the list's own scores (no embedding), then exported as DataComp's sorted uid array."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from pipeline import steps
from pipeline.core import schema as S
from pipeline.core.runners import LocalRunner
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset
from pipeline.demo.sample import IMAGE_SUBDIR, ImageServer
from pipeline.export.datacomp import UID_DTYPE, uid_array, uid_halves, write_datacomp_uids

PARAMS = dict(image_size=32, resize_mode="border", encode_format="png", encode_quality=6, thread_count=8, timeout=5)
KEEP = "uid,clip_b32_similarity_score,clip_l14_similarity_score"


def test_uid_halves_are_the_two_64_bit_halves():
    assert uid_halves("ffffffffffffffff0000000000000001") == (2**64 - 1, 1)
    assert uid_halves("  0000000000000001FFFFFFFFFFFFFFFE ") == (1, 2**64 - 2)
    arr = uid_array(["ffffffffffffffff0000000000000001", "0000000000000001ffffffffffffffff", "0000000000000001fffffffffffffffe"])
    assert arr.dtype == UID_DTYPE
    assert arr.tolist() == [(1, 2**64 - 2), (1, 2**64 - 1), (2**64 - 1, 1)]  # by high half, then low half
    for bad in ("abc", "g" * 32, "0" * 33):
        with pytest.raises(ValueError, match="not a 128-bit hex uid"):
            uid_halves(bad)


@pytest.fixture(scope="module")
def pool(tmp_path_factory, emoji_dir):
    """A crawled DataComp-style pool: 16 emoji and one broken url, with uids and both CLIP scores."""
    from pipeline.demo.sample import emoji_items

    items = emoji_items(emoji_dir, 16)
    rng = random.Random(7)
    tmp = tmp_path_factory.mktemp("datacomp")
    with ImageServer(emoji_dir, host="127.0.0.17") as server:
        urls = [f"{server.url}/{IMAGE_SUBDIR}/{it.image}" for it in items] + [f"{server.url}/{IMAGE_SUBDIR}/missing.png"]
        captions = [it.caption for it in items] + ["a missing image"]
        n = len(urls)
        rows = {
            "uid": [f"{rng.getrandbits(128):032x}" for _ in range(n)],
            "url": urls,
            "text": captions,
            "original_width": [64] * n,
            "clip_b32_similarity_score": [round(rng.uniform(0.1, 0.4), 4) for _ in range(n)],
            "clip_l14_similarity_score": [round(rng.uniform(0.1, 0.4), 4) for _ in range(n)],
        }
        path = tmp / "pool.parquet"
        pq.write_table(pa.table(rows), path)
        ds = Dataset(tmp / "ds")
        steps.crawl(ds, [str(path)], {**PARAMS, "allow_addresses": [server.address]}, LocalRunner(progress=False), keep_columns=KEEP)
    steps.score(ds, LocalRunner(progress=False))
    raw = ds.table(S.RAW).read(columns=[S.URL, S.STATUS])
    crawled = dict(zip(raw[S.URL].to_pylist(), raw[S.STATUS].to_pylist()))
    assert crawled[urls[-1]] == "failed_to_download" and sum(s == "success" for s in crawled.values()) == 16
    by_uid = {uid: {k: rows[k][i] for k in rows} for i, uid in enumerate(rows["uid"])}
    return ds, by_uid, tmp


def _expected(by_uid, keep) -> list[tuple[int, int]]:
    return sorted(uid_halves(u) for u, r in by_uid.items() if not r["url"].endswith("missing.png") and keep(r))


def test_curate_on_precomputed_scores_then_export_sorted_uids(pool):
    ds, by_uid, tmp = pool
    assert not ds.table(S.EMBEDDINGS).exists()  # nothing was embedded: the list's scores are the CLIP scores

    # DataComp's "CLIP score threshold" baseline on the pool's L/14 score
    funnel = {r["reason"]: r["rows"] for r in steps.curate(ds, {"clip_score_from": "clip_l14_similarity_score", "min_clip_score": 0.25})}
    expected = _expected(by_uid, lambda r: r["clip_l14_similarity_score"] >= 0.25)
    assert 0 < len(expected) < 16
    assert funnel["kept"] == len(expected) and funnel["low_clip_score"] == 16 - len(expected)

    report = write_datacomp_uids(ds, str(tmp / "l14.npy"))
    arr = np.load(tmp / "l14.npy")
    assert arr.dtype == np.dtype("u8,u8")
    assert arr.tolist() == expected  # the curated set, sorted as DataComp sorts it
    assert np.array_equal(arr, np.sort(arr))
    assert report.uids == report.curated_rows == len(expected) and report.duplicate_uids == 0
    assert not [p for p in tmp.iterdir() if p.name.startswith(".")]  # no temporary file left

    # the "top fraction" baseline on the B/32 score: the cut is the pool's quantile of that score
    steps.curate(ds, {"clip_score_from": "clip_b32_similarity_score", "clip_score_top_fraction": 0.5})
    pool_scores = [r["clip_b32_similarity_score"] for r in by_uid.values()]
    cut = float(np.quantile(pool_scores, 0.5))
    out = tmp / "b32.npy"
    assert main(["export", "--dataset", str(ds.root), "--datacomp-uids", str(out)]) == 0
    assert np.load(out).tolist() == _expected(by_uid, lambda r: r["clip_b32_similarity_score"] >= cut)


def test_uids_export_into_a_bucket(pool, s3):
    """`--datacomp-uids s3://...`: the same array, as one object on a real S3 server (moto's)."""
    import io

    import s3fs

    ds, by_uid, tmp = pool
    steps.curate(ds, {"clip_score_from": "clip_l14_similarity_score", "min_clip_score": 0.25})
    assert main(["export", "--dataset", str(ds.root), "--datacomp-uids", "s3://foil-bucket/datacomp/l14.npy"]) == 0
    stored = s3fs.S3FileSystem(use_listings_cache=False)
    arr = np.load(io.BytesIO(stored.cat_file("foil-bucket/datacomp/l14.npy")))
    assert arr.dtype == np.dtype("u8,u8") and arr.tolist() == _expected(by_uid, lambda r: r["clip_l14_similarity_score"] >= 0.25)
    assert stored.find("foil-bucket/datacomp") == ["foil-bucket/datacomp/l14.npy"]  # nothing else written


def test_rows_without_uid_or_score_are_named(pool, tmp_path, capsys):
    ds, _, _ = pool
    steps.curate(ds, {"clip_score_from": "not_a_kept_column", "min_clip_score": 0.2})
    funnel = {r["reason"]: r["rows"] for r in ds_funnel(ds)}
    assert funnel == {"crawl:failed_to_download": 1, "no_clip_score": 16}  # a missing score is a reason, not a silent drop
    assert main(["export", "--dataset", str(ds.root), "--datacomp-uids", str(tmp_path / "x.npy")]) == 2
    assert "the curated view has no rows" in capsys.readouterr().err

    with pytest.raises(ConfigError, match=r"curate.clip_score_from: must be 'embeddings' or the name of a kept url-list column"):
        steps.curate(ds, {"clip_score_from": "x'; drop table raw; --"})

    # a dataset crawled without --keep-columns uid: the error says how to get the uids
    steps.curate(ds, {})
    bare = Dataset(tmp_path / "bare")
    raw = ds.table(S.RAW).read()
    bare.table(S.RAW).write_shard("part-00000", raw.drop_columns([S.EXTRA]).select(S.RAW_SCHEMA.names).cast(S.RAW_SCHEMA))
    bare.table(S.RAW).write_manifest("crawl", {}, [S.URLS])
    bare.table(S.SCORES).write_shard("part-00000", ds.table(S.SCORES).read().select(S.SCORES_SCHEMA.names).cast(S.SCORES_SCHEMA))
    bare.table(S.SCORES).write_manifest("score", {}, [S.RAW])
    with pytest.raises(ConfigError, match=r"16 of 16 curated rows carry no DataComp uid \(first: sample_id [0-9a-f]+\); crawl the DataComp url lists with --keep-columns uid"):
        write_datacomp_uids(bare, str(tmp_path / "y.npy"))
    assert not (tmp_path / "y.npy").exists()


def ds_funnel(ds: Dataset) -> list[dict]:
    from pipeline.core.catalog import Catalog

    return Catalog(ds).query("SELECT * FROM funnel").to_pylist()
