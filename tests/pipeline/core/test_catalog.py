from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog, QueryRefused, check_read_only
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset
from pipeline.stages import stage_class
from tests.conftest import png_bytes


def _raw_rows() -> pa.Table:
    rows = [
        ("http://h/a.png", "a red apple", "success", (255, 0, 0), (48, 48)),
        ("http://h/b.png", "a green apple", "success", (0, 255, 0), (48, 48)),
        ("http://h/c.png", "tiny", "success", (0, 0, 255), (16, 16)),  # too small
        ("http://h/d.png", "a copy of the red apple", "success", (255, 0, 0), (48, 48)),  # same bytes as a
        ("http://h/e.png", "gone", "failed_to_download", None, None),
    ]
    out = {name: [] for name in S.RAW_SCHEMA.names}
    for url, caption, status, color, size in rows:
        blob = png_bytes(color, size) if color else None
        out[S.SAMPLE_ID].append(S.sample_id(url, caption))
        out[S.URL].append(url)
        out[S.CAPTION].append(caption)
        out[S.STATUS].append(status)
        out[S.ERROR].append(None if blob else "HTTP Error 404")
        out[S.ERROR_KIND].append(None if blob else "http_404")
        out[S.WIDTH].append(size[0] if size else None)
        out[S.HEIGHT].append(size[1] if size else None)
        out[S.ORIGINAL_WIDTH].append(size[0] if size else None)
        out[S.ORIGINAL_HEIGHT].append(size[1] if size else None)
        out[S.SHA256].append(None)
        out[S.IMAGE].append(blob)
    return pa.table(out, schema=S.RAW_SCHEMA)


@pytest.fixture
def scored(tmp_path):
    from pipeline.core.runners import LocalRunner

    ds = Dataset(tmp_path / "ds")
    raw = ds.table(S.RAW)
    raw.write_shard("part-00000", _raw_rows())
    raw.write_manifest("crawl", {}, [S.URLS])
    LocalRunner(progress=False).run(stage_class("score"), {}, ds, S.RAW, S.SCORES)
    Catalog(ds).refresh()
    return ds


def test_views_curate_and_explain_every_drop(scored):
    cat = Catalog(scored)
    funnel = {r["reason"]: r["rows"] for r in cat.query("select * from funnel").to_pylist()}
    assert funnel == {"crawl:failed_to_download": 1, "too_small": 1, "duplicate:sha256": 1, "kept": 2}
    curated = cat.query("select caption from curated order by caption").column("caption").to_pylist()
    assert len(curated) == 2 and "tiny" not in curated
    # every raw row appears in `curation` exactly once: nothing is silently dropped
    assert cat.query("select count(*) n from curation").column("n")[0].as_py() == 5
    shards = cat.query("select distinct shard from raw").column("shard").to_pylist()
    assert shards == ["part-00000"]


def test_rethresholding_changes_only_the_views(scored):
    cat = Catalog(scored)
    scores_manifest = scored.table(S.SCORES).manifest()
    cat.set_thresholds({"min_width": 8, "min_height": 8})
    cat.refresh()
    funnel = {r["reason"]: r["rows"] for r in cat.query("select * from funnel").to_pylist()}
    assert funnel["kept"] == 3 and "too_small" not in funnel
    assert scored.table(S.SCORES).manifest()["shards"] == scores_manifest["shards"]


def test_bad_thresholds_name_the_field(scored):
    with pytest.raises(ConfigError, match=r"curate\.min_widht: unknown threshold"):
        Catalog(scored).set_thresholds({"min_widht": 3})
    with pytest.raises(ConfigError, match=r"curate\.min_width: must be a number"):
        Catalog(scored).set_thresholds({"min_width": "big"})


def test_views_of_missing_tables_are_skipped_then_created(tmp_path):
    ds = Dataset(tmp_path / "ds")
    raw = ds.table(S.RAW)
    raw.write_shard("part-00000", _raw_rows())
    raw.write_manifest("crawl", {}, [S.URLS])
    status = Catalog(ds).refresh()
    assert status["raw"] == "ok"
    assert status["10_curation.sql"].startswith("skipped")  # no scores yet
    assert status["20_crawl.sql"] == "ok"
    rows = Catalog(ds).query("select status, rows from crawl_status order by status").to_pylist()
    assert rows == [{"status": "failed_to_download", "rows": 1}, {"status": "success", "rows": 4}]
    stats = Catalog(ds).query("select status, error_kind, rows, shard_rows, shard_seconds from crawl_stats order by status").to_pylist()
    assert [(r["status"], r["error_kind"], r["rows"], r["shard_rows"]) for r in stats] == [("failed_to_download", "http_404", 1, 5), ("success", None, 4, 5)]
    summary = Catalog(ds).query("select * from crawl_summary").to_pylist()[0]
    assert (summary["rows"], summary["success"], summary["success_rate"]) == (5, 4, 0.8)


@pytest.mark.parametrize(
    "sql",
    [
        "create table t (a int)",
        "insert into foil_views values ('a', 'b')",
        "copy (select 1) to '/tmp/foil-should-not-exist.csv'",
        "attach ':memory:' as other",
        "set threads = 1",
        "install httpfs",
        "drop view curated",
        "select 1; delete from foil_views",
        "export database '/tmp/foil-export'",
    ],
)
def test_writes_are_refused_before_running(scored, sql):
    with pytest.raises(QueryRefused, match="refused a"):
        Catalog(scored).query(sql)


@pytest.mark.parametrize("sql", ["select 1", "describe raw", "show tables", "explain select * from raw", "with a as (select 1) select * from a"])
def test_reads_are_allowed(sql):
    check_read_only(sql)


def test_unparsable_query_is_a_clear_error():
    with pytest.raises(QueryRefused, match="cannot parse"):
        check_read_only("selec 1 from")
