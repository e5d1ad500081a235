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


# -- what each command pays for (issue 15) ----------------------------------------------------
# Runs `foil ARGS...` in a fresh process and reports, on its last stderr line, which heavy
# packages the command imported and whether it connected to Ray.
MODULES_PROBE = """
import json, sys
from flows.cli import main
rc = main(sys.argv[1:])
ray = sys.modules.get("ray")
print(json.dumps({"rc": rc, "ray_started": bool(ray and ray.is_initialized()),
                  "modules": sorted(m for m in ("torch", "open_clip", "ray", "prefect") if m in sys.modules)}), file=sys.stderr)
"""


def foil_modules(*args: str, env: dict | None = None, timeout: int = 300) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([sys.executable, "-c", MODULES_PROBE, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.stderr.strip(), proc.stdout[-2000:]
    return proc, json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.fixture
def scored(tmp_path):
    from pipeline.core.runners import LocalRunner
    from pipeline.stages import stage_class
    from tests.conftest import make_raw

    ds = Dataset(tmp_path / "scored")
    make_raw(ds, shards=2, rows=4)
    LocalRunner(progress=False).run(stage_class("score"), {}, ds, S.RAW, S.SCORES)
    Catalog(ds).refresh()
    return ds


def test_sql_curate_and_recipe_validation_import_no_torch(scored, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("curate: {min_width: 16, min_height: 16, min_caption_words: 1}\ntrain: {model: foil-tiny-vit-sigmoid, loss: siglip}\n")
    proc, seen = foil_modules("curate", "--dataset", scored.root, "--recipe", str(recipe))
    assert seen["rc"] == 0, proc.stderr[-2000:]
    funnel = dict(line.split() for line in proc.stdout.splitlines())
    assert sum(int(n) for n in funnel.values()) == 8  # every row kept or removed for a reason
    assert seen["modules"] == [], seen  # no torch, open_clip, Ray or Prefect for a SQL re-threshold
    proc, seen = foil_modules("sql", "--dataset", scored.root, "select count(*) as n from curated", "--format", "json")
    assert seen["rc"] == 0 and json.loads(proc.stdout) == [{"n": int(funnel.get("kept", 0))}], proc.stderr[-2000:]
    assert seen["modules"] == [], seen

    validate = (
        "import json, sys\n"
        "from flows.recipe import builtin_recipes, load_recipe\n"
        "names = builtin_recipes()\n"
        "recipes = [load_recipe(n) for n in names]\n"
        "print(json.dumps({'names': names, 'train': [r.train.get('model') for r in recipes],\n"
        "                  'modules': sorted(m for m in ('torch', 'open_clip', 'ray', 'prefect') if m in sys.modules)}))\n"
    )
    out = json.loads(subprocess.run([sys.executable, "-c", validate], capture_output=True, text=True, check=True, timeout=300).stdout)
    assert "demo" in out["names"] and "foil-tiny-vit" in out["train"]  # the train section was read and validated
    assert out["modules"] == [], out


def test_a_small_stage_and_a_no_op_stage_start_neither_ray_nor_prefect(tmp_path):
    from tests.conftest import make_raw

    ds = Dataset(tmp_path / "ds")
    make_raw(ds, shards=2, rows=4)
    # The default recipe's runner is Ray, but 8 rows are done before an embedded Ray would start.
    proc, seen = foil_modules("score", "--dataset", ds.root)
    assert seen["rc"] == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["stats"]["rows_out"] == 8
    assert not seen["ray_started"] and seen["modules"] == [], seen
    proc, seen = foil_modules("score", "--dataset", ds.root)  # nothing left to do
    report = json.loads(proc.stdout)
    assert seen["rc"] == 0 and report["shards_skipped"] == report["shards_total"] == 2 and report["results"] == []
    assert not seen["ray_started"] and seen["modules"] == [], seen


def test_prefect_runs_the_stages_only_when_asked(monkeypatch):
    import argparse
    import inspect

    from flows.cli import _steps
    from flows.commands import COMMANDS

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert _steps(argparse.Namespace(prefect=False)) is COMMANDS
    asked = _steps(argparse.Namespace(prefect=True))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")  # a configured server means tracking
    assert _steps(argparse.Namespace(prefect=False)) is asked
    assert asked is not COMMANDS and set(asked) == set(COMMANDS)
    for name, flow in asked.items():  # one argument list for both: the CLI calls either the same way
        assert list(inspect.signature(flow.fn).parameters) == list(inspect.signature(COMMANDS[name]).parameters), name


def test_stage_commands_take_prefect_and_ray_address_flags():
    parser = build_parser()
    for name in ("crawl", "score", "embed", "negatives", "export", "train"):
        args = parser.parse_args([name, "--dataset", "d", "--prefect", "--ray-address", "127.0.0.1:6379", *(["--out", "o"] if name == "train" else [])])
        assert args.prefect and args.ray_address == "127.0.0.1:6379"
    assert parser.parse_args(["curate", "--dataset", "d"]).prefect is False
