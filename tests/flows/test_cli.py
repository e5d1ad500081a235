"""The `foil` command line: help, one-line errors with exit code 2, read-only SQL."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest

from flows.cli import build_parser, format_rows
from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.store import Dataset


def foil(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def dataset(tmp_path):
    ds = Dataset(tmp_path / "ds")
    t = ds.table(S.URLS)
    t.write_shard("part-00000", pa.table({S.SAMPLE_ID: ["a", "b"], S.URL: ["http://h/1", "http://h/2"], S.CAPTION: ["x", None]}))
    t.write_manifest("urls", {}, [])
    Catalog(ds).refresh()
    return ds


def test_every_subcommand_has_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # the registered subcommands
    assert {"demo", "sql", "crawl", "score", "curate", "negatives", "export", "train", "eval"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([name, "--help"])
        assert exc.value.code == 0


def test_sql_formats(dataset):
    out = foil("sql", "--dataset", dataset.root, "select url, caption from urls order by url", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"url": "http://h/1", "caption": "x"}, {"url": "http://h/2", "caption": None}]
    csv = foil("sql", "--dataset", dataset.root, "select count(*) as n from urls", "--format", "csv")
    assert csv.stdout.splitlines() == ["n", "2"]
    table = foil("sql", "--dataset", dataset.root, "select * from urls order by url")
    assert "(2 rows)" in table.stdout and "sample_id" in table.stdout.splitlines()[0]


def test_table_format_shows_bytes_as_sizes():
    text = format_rows(pa.table({"image": [b"12345"], "caption": ["c"]}), "table")
    assert "<5 bytes>" in text


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("create table t (a int)", "refused a CREATE statement"),
        ("copy (select 1) to '/tmp/foil-cli-should-not-exist.csv'", "refused a COPY statement"),
        ("attach '/tmp/other.duckdb' as o", "refused a ATTACH statement"),
        ("insert into foil_views values ('x', 'y')", "refused a INSERT statement"),
    ],
)
def test_writing_sql_is_refused(dataset, query, fragment):
    assert_one_line_error(foil("sql", "--dataset", dataset.root, query), "foil sql: error:", fragment)


def test_sql_on_a_folder_without_catalog(tmp_path):
    assert_one_line_error(foil("sql", "--dataset", str(tmp_path), "select 1"), "has no catalog.duckdb")


def test_unknown_command_and_missing_flags():
    assert_one_line_error(foil("scrape"), "invalid choice: 'scrape'")
    assert_one_line_error(foil("crawl", "--dataset", "x"), "the following arguments are required: --urls")


def test_bad_recipe_is_one_line_naming_the_field(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("crawl:\n  params:\n    resize_mode: squash\n")
    assert_one_line_error(foil("demo", "--out", str(tmp_path / "d"), "--recipe", str(recipe)), "crawl.resize_mode: 'squash'")
    recipe.write_text("train:\n  stepz: 3\n")
    assert_one_line_error(foil("train", "--dataset", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(recipe)), "train.stepz: unknown field")


def test_bad_numbers_on_the_command_line(tmp_path):
    assert_one_line_error(foil("demo", "--limit", "0", "--out", str(tmp_path / "d")), "--limit: must be positive")
    assert_one_line_error(foil("train", "--dataset", str(tmp_path), "--out", str(tmp_path), "--workers", "0"), "--workers: must be positive")
    assert_one_line_error(foil("sql", "--dataset", str(tmp_path), "select 1", "--format", "xml"), "invalid choice: 'xml'")


def test_crawl_with_a_bad_url_list_names_file_and_column(tmp_path):
    urls = tmp_path / "urls.csv"
    urls.write_text("link,text\nhttp://127.0.0.1/a.png,a\n")
    proc = foil("crawl", "--dataset", str(tmp_path / "ds"), "--urls", str(urls), timeout=300)
    assert_one_line_error(proc, "urls.csv: no column 'url' (set --url-col)")


def test_crawl_command_reports_rates_and_feeds_crawl_stats(tmp_path, emoji_server, few_emoji):
    urls = tmp_path / "urls.jsonl"
    lines = [json.dumps({"url": f"{emoji_server.url}/img/google/64/{it.image}", "caption": it.caption}) for it in few_emoji[:12]]
    lines.append(json.dumps({"url": f"{emoji_server.url}/nope.png", "caption": "missing"}))
    urls.write_text("\n".join(lines) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("runner: {kind: local}\ncrawl: {shard_rows: 5, params: {image_size: 32, encode_format: png}}\n")
    ds = tmp_path / "ds"

    blocked = foil("crawl", "--dataset", str(ds), "--urls", str(urls), "--recipe", str(recipe), timeout=300)
    assert blocked.returncode == 0, blocked.stderr[-2000:]
    assert json.loads(blocked.stdout)["stats"]["counts"]["status:blocked_address"] == 13

    proc = foil("crawl", "--dataset", str(ds), "--urls", str(urls), "--recipe", str(recipe), "--allow-address", emoji_server.address, "--overwrite", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["success_rate"] == 12 / 13 and report["images_per_second"] > 0
    assert report["ingest"]["rows"] == 13 and report["shards_total"] == 3
    rows = Catalog(Dataset(ds)).query("select status, error_kind, sum(rows) as n from crawl_stats group by all order by status").to_pylist()
    assert [(r["status"], r["error_kind"], int(r["n"])) for r in rows] == [("failed_to_download", "http_404", 1), ("success", None, 12)]
