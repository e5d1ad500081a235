"""Incremental crawls, retries of transient failures, and the LAION / DataComp list layouts,
against real HTTP servers on loopback addresses that log every request they get."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import steps
from pipeline.core import schema as S
from pipeline.core.runners import LocalRunner
from pipeline.core.store import Dataset
from pipeline.crawl.urls import ingest_urls
from pipeline.demo.sample import IMAGE_SUBDIR, ImageServer
from tests.pipeline.crawl.test_crawl_polite import HostLog, logging_handler

REPO = Path(__file__).resolve().parents[3]
PARAMS = dict(image_size=32, resize_mode="border", encode_format="png", encode_quality=6, thread_count=8, timeout=5)


def _params(server) -> dict:
    return {**PARAMS, "allow_addresses": [server.address]}


def _list(path: Path, urls: list[str], captions: list[str]) -> str:
    pq.write_table(pa.table({"url": urls, "caption": captions}), path)
    return str(path)


def _image_paths(log: HostLog) -> Counter:
    return Counter(p for p in log.paths if p != "/robots.txt")


def test_new_lists_add_only_unseen_urls_as_new_shards_and_downstream_does_only_those(tmp_path, emoji_dir, few_emoji):
    log = HostLog()
    runner = LocalRunner(progress=False)
    with ImageServer(emoji_dir, handler=logging_handler(log), host="127.0.0.11") as server:
        a = [f"{server.url}/{IMAGE_SUBDIR}/{it.image}" for it in few_emoji[:12]]
        b = [f"{server.url}/{IMAGE_SUBDIR}/{it.image}" for it in few_emoji[12:20]]
        b.append(f"{server.url}/{IMAGE_SUBDIR}/{few_emoji[0].image}?copy=1")  # the same image as a's first: a duplicate across lists
        list_a = _list(tmp_path / "a.parquet", a, [f"a {i}" for i in range(len(a))])
        list_b = _list(tmp_path / "b.parquet", b, [f"b {i}" for i in range(len(b))])
        ds = Dataset(tmp_path / "ds")
        first = steps.crawl(ds, [list_a], _params(server), runner, shard_rows=4)
        assert first["shards_total"] == 3 and first["ingest"]["added_rows"] == 12
        assert sorted(_image_paths(log).values()) == [1] * 12
        scored = steps.score(ds, runner)
        assert scored["shards_skipped"] == 0 and len(scored["results"]) == 3
        deduped = steps.dedup(ds, {})
        assert deduped["exact"] == 0

        log.paths.clear()
        second = steps.crawl(ds, [list_a, list_b], _params(server), runner, shard_rows=4)
        # list a is recorded unchanged and not read again; b's 9 rows become shards 3, 4, 5
        assert second["ingest"]["files_unchanged"] == 1 and second["ingest"]["added_rows"] == 9
        assert second["shards_skipped"] == 3 and [r["shard"] for r in second["results"]] == ["part-00003", "part-00004", "part-00005"]
        b_paths = {u.split(server.url, 1)[1] for u in b}
        assert set(_image_paths(log)) == b_paths and sorted(_image_paths(log).values()) == [1] * 9  # only b was fetched

        raw = ds.table(S.RAW).read(columns=[S.URL, S.STATUS])
        assert sorted(raw[S.URL].to_pylist()) == sorted(a + b)  # each url once
        assert set(raw[S.STATUS].to_pylist()) == {"success"}

        rescored = steps.score(ds, runner)
        assert rescored["shards_skipped"] == 3 and [r["shard"] for r in rescored["results"]] == ["part-00003", "part-00004", "part-00005"]
        assert ds.table(S.SCORES).read().num_rows == 21
        # dedup is a whole-dataset step: its input changed, so it runs again over old and new rows
        again = steps.dedup(ds, {})
        assert again["resumed"] is False and again["rows"] == 21 and again["exact"] == 1

        # the same lists once more (a touched: read again): nothing added, nothing fetched
        log.paths.clear()
        Path(list_a).touch()
        third = steps.crawl(ds, [list_a, list_b], _params(server), runner, shard_rows=4)
        assert third["ingest"]["added_rows"] == 0 and third["ingest"]["already_ingested"] == 12
        assert third["shards_skipped"] == 6 and third["results"] == [] and _image_paths(log) == Counter()
        assert steps.score(ds, runner)["results"] == [] and steps.dedup(ds, {})["resumed"] is True
    manifest = ds.table(S.URLS).manifest()
    assert [Path(e["path"]).name for e in manifest["ingested"]] == ["a.parquet", "b.parquet", "a.parquet"]
    assert manifest["ingested"][1]["shards"] == ["part-00003", "part-00004", "part-00005"]


def test_overwrite_replaces_the_urls_and_what_was_crawled(tmp_path):
    first = _list(tmp_path / "a.parquet", ["http://x/1.png", "http://x/2.png"], ["one", "two"])
    second = _list(tmp_path / "b.parquet", ["http://x/3.png"], ["three"])
    ds = Dataset(tmp_path / "ds")
    ingest_urls(ds, [first], shard_rows=1)
    grown = ingest_urls(ds, [second], shard_rows=1)
    assert (grown.added_rows, grown.rows, grown.shards) == (1, 3, 3)
    replaced = ingest_urls(ds, [second], shard_rows=1, overwrite=True)
    assert (replaced.rows, replaced.shards) == (1, 1) and ds.table(S.URLS).read()[S.URL].to_pylist() == ["http://x/3.png"]


def test_retry_failed_recovers_transient_rows_in_place_and_leaves_404s(tmp_path, emoji_dir, few_emoji):
    log = HostLog()
    failed_once: set[str] = set()
    lock = threading.Lock()

    def fail_first_time(handler) -> bool:
        with lock:
            first = handler.path not in failed_once
            failed_once.add(handler.path)
        if first:
            handler._answer(503, b"busy")  # no Retry-After: a plain transient failure
        return first

    images = [it.image for it in few_emoji[:6]]
    paths = [f"/{IMAGE_SUBDIR}/{img}" for img in images]
    with ImageServer(emoji_dir, handler=logging_handler(log, routes={p: fail_first_time for p in paths}), host="127.0.0.12") as server:
        missing = [f"{server.url}/{IMAGE_SUBDIR}/missing-{i}.png" for i in range(2)]
        good = [server.url + p for p in paths]
        urls = [good[0], missing[0], *good[1:4], missing[1], *good[4:]]
        ds = Dataset(tmp_path / "ds")
        runner = LocalRunner(progress=False)
        steps.crawl(ds, [_list(tmp_path / "u.parquet", urls, [f"row {i}" for i in range(len(urls))])], _params(server), runner, shard_rows=4)
        before = ds.table(S.RAW).read(columns=[S.URL, S.STATUS, S.ERROR_KIND])
        assert before[S.ERROR_KIND].to_pylist() == ["http_503", "http_404", "http_503", "http_503", "http_503", "http_404", "http_503", "http_503"]
        steps.score(ds, runner)
        assert ds.table(S.SCORES).read().num_rows == 0  # scores cover images only
        old_markers = {n: (Path(ds.table(S.RAW).root) / "_shards" / f"{n}.json").read_text() for n in ("part-00000", "part-00001")}

        log.paths.clear()
        proc = subprocess.run(
            [sys.executable, "-m", "flows.cli", "crawl", "--dataset", str(ds.root), "--retry-failed", "--allow-address", server.address,
             "--recipe", str(_recipe(tmp_path))],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
    assert proc.returncode == 0, proc.stdout[-2000:] + "".join(l for l in proc.stderr.splitlines(True) if "leaked" not in l and "nanobind" not in l)[-3000:]
    assert "retried 6 rows failed transiently: 6 recovered" in proc.stderr
    assert sorted(_image_paths(log)) == sorted(paths)  # each 503 row once more, the 404s not at all
    after = ds.table(S.RAW).read(columns=[S.URL, S.STATUS, S.ERROR_KIND, S.IMAGE])
    assert after[S.URL].to_pylist() == urls  # in place: one row per url, in the same order
    assert after[S.STATUS].to_pylist() == ["success", "failed_to_download", "success", "success", "success", "failed_to_download", "success", "success"]
    assert after[S.ERROR_KIND].to_pylist().count("http_404") == 2
    raw = ds.table(S.RAW)
    manifest = raw.manifest()
    assert manifest["complete"] and manifest["rows"] == 8
    markers = raw.finished_shards()
    assert markers["part-00000"].stats["counts"]["retry_failed:recovered"] == 3
    assert markers["part-00000"].stats["counts"]["status:success"] == 3 and "status:failed_to_download" in markers["part-00000"].stats["counts"]
    assert all((Path(raw.root) / "_shards" / f"{n}.json").read_text() != old_markers[n] for n in old_markers)
    # the scores of the rewritten shards were stale: no longer committed, and a rerun recomputes them
    assert ds.table(S.SCORES).manifest()["complete"] is False and ds.table(S.SCORES).finished_shards() == {}
    rescored = steps.score(ds, LocalRunner(progress=False))
    assert len(rescored["results"]) == 2 and ds.table(S.SCORES).read().num_rows == 6


def _recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text("runner: {kind: local}\ncrawl:\n  params: " + json.dumps(PARAMS) + "\n")
    return path


def test_laion_and_datacomp_layouts_keep_columns_and_check_sha256(tmp_path, emoji_dir, few_emoji):
    log = HostLog()
    with ImageServer(emoji_dir, handler=logging_handler(log), host="127.0.0.13") as server:
        laion = tmp_path / "laion.parquet"
        pq.write_table(pa.table({
            "URL": [f"{server.url}/{IMAGE_SUBDIR}/{it.image}" for it in few_emoji[:3]],
            "TEXT": [it.caption for it in few_emoji[:3]],
            "similarity": [0.31, 0.32, 0.33],
        }), laion)
        digests = [hashlib.sha256((emoji_dir / IMAGE_SUBDIR / it.image).read_bytes()).hexdigest() for it in few_emoji[3:6]]
        digests[1] = "0" * 64  # the list says another image: the download must not be kept
        datacomp = tmp_path / "datacomp.jsonl"
        datacomp.write_text("".join(
            json.dumps({"uid": f"uid{i}", "url": f"{server.url}/{IMAGE_SUBDIR}/{it.image}", "text": it.caption, "sha256": d.upper() if i == 0 else d, "similarity": 0.2}) + "\n"
            for i, (it, d) in enumerate(zip(few_emoji[3:6], digests))
        ))
        ds = Dataset(tmp_path / "ds")
        report = steps.crawl(ds, [str(laion), str(datacomp)], _params(server), LocalRunner(progress=False), keep_columns="similarity")
    raw = ds.table(S.RAW).read(columns=[S.CAPTION, S.STATUS, S.ERROR_KIND, S.SHA256, S.EXTRA])
    assert raw[S.CAPTION].to_pylist() == [it.caption for it in few_emoji[:6]]
    assert raw[S.STATUS].to_pylist() == ["success"] * 4 + ["sha256_mismatch", "success"]
    assert raw[S.ERROR_KIND].to_pylist()[4] == "sha256_mismatch"
    assert raw[S.SHA256].to_pylist()[3] == digests[0]  # matched although the list wrote it in capitals
    assert [json.loads(e) for e in raw[S.EXTRA].to_pylist()] == [{"similarity": s} for s in (0.31, 0.32, 0.33, 0.2, 0.2, 0.2)]
    assert report["stats"]["counts"]["sha256_checked"] == 3


def test_keep_columns_names_the_file_and_column(tmp_path):
    import pytest

    from pipeline.core.stage import ConfigError

    path = _list(tmp_path / "a.parquet", ["http://x/1.png"], ["one"])
    with pytest.raises(ConfigError, match=r"a\.parquet: no column 'uid' \(set --keep-columns\)"):
        ingest_urls(Dataset(tmp_path / "ds"), [path], keep_columns="uid")
