from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pytest

from pipeline.core import schema as S
from pipeline.core.store import MANIFEST, Dataset, StoreError, shard_name


def _rows(n: int, offset: int = 0) -> pa.Table:
    urls = [f"http://x/{i}" for i in range(offset, offset + n)]
    return pa.table({S.SAMPLE_ID: [S.sample_id(u, "c") for u in urls], S.URL: urls, S.CAPTION: ["c"] * n})


def test_sample_id_is_stable_and_depends_on_url_and_caption():
    assert S.sample_id("http://a", "cat") == S.sample_id("http://a", "cat")
    assert S.sample_id("http://a", "cat") != S.sample_id("http://a", "dog")
    assert S.sample_id("http://a", None) == S.sample_id("http://a", "")
    assert len(S.sample_id("http://a", "cat")) == 16


def test_write_shard_commits_file_marker_and_manifest(tmp_path):
    ds = Dataset(tmp_path / "ds")
    t = ds.table("urls")
    t.write_shard(shard_name(0), _rows(5), stats={"rows_in": 5})
    t.write_shard(shard_name(1), _rows(3, 5))
    manifest = t.write_manifest("urls", {"x": 1}, ["input"], expected_shards=[shard_name(i) for i in range(3)])

    assert manifest["rows"] == 8
    assert manifest["shards"]["part-00000"]["status"] == "done"
    assert manifest["shards"]["part-00002"]["status"] == "pending"
    assert manifest["complete"] is False
    assert manifest["schema_version"] == S.SCHEMA_VERSION
    assert json.loads((tmp_path / "ds" / "urls" / MANIFEST).read_text())["config"] == {"x": 1}
    assert t.read().num_rows == 8
    assert ds.tables() == ["urls"]
    # nothing left in the temporary folder after clean writes
    assert list((tmp_path / "ds" / "urls" / "_tmp").iterdir()) == []


def test_rewriting_a_shard_replaces_it_without_duplicates(tmp_path):
    t = Dataset(tmp_path).table("t")
    t.write_shard("part-00000", _rows(4))
    t.write_shard("part-00000", _rows(4))
    assert t.read().num_rows == 4
    n = duckdb.sql(f"select count(*) from read_parquet('{t.root}/*.parquet')").fetchall()[0][0]
    assert n == 4


def test_reading_a_missing_table_names_it(tmp_path):
    with pytest.raises(StoreError, match="table 'raw'"):
        Dataset(tmp_path).table("raw").manifest()
    with pytest.raises(StoreError, match="no finished shards"):
        Dataset(tmp_path).table("raw").read()


def test_tmp_leftovers_are_invisible_to_queries_and_cleaned(tmp_path):
    t = Dataset(tmp_path).table("t")
    t.write_shard("part-00000", _rows(2))
    leftover = tmp_path / "t" / "_tmp" / "part-00001.parquet.deadbeef"
    leftover.write_bytes(b"PAR1 half written")
    n = duckdb.sql(f"select count(*) from read_parquet('{t.root}/*.parquet')").fetchall()[0][0]
    assert n == 2
    assert t.clean_tmp() == 1
    assert not leftover.exists()


def test_fsspec_memory_filesystem_roundtrip():
    ds = Dataset("memory://foil-test-ds")
    t = ds.table("urls")
    t.write_shard("part-00000", _rows(3))
    t.write_manifest("urls", {}, [])
    assert not ds.is_local
    assert t.read().num_rows == 3
    assert ds.tables() == ["urls"]
