"""Datasets on object storage: a real S3-compatible server (moto's, on loopback) holds every
table; the stages, the DuckDB catalog and `foil sql` work on `s3://` exactly as on a folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import steps
from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.runners import LocalRunner
from pipeline.core.store import Dataset

REPO = Path(__file__).resolve().parents[3]


def _loop(dataset: Dataset, urls: str, allow: str) -> dict[str, int]:
    """The data loop as `foil demo` runs it, in-process: crawl, score, dedup, curate, embed, negatives, export."""
    runner = LocalRunner(retries=0, progress=False)
    steps.crawl(dataset, [urls], {"image_size": 32, "thread_count": 4, "allow_addresses": [allow]}, runner, shard_rows=16)
    steps.score(dataset, runner)
    steps.dedup(dataset, {"max_phash_distance": 2})
    steps.curate(dataset, {"min_caption_words": 1})
    # after dedup: a random-init model finds every emoji a semantic duplicate of every other
    steps.embed(dataset, {"model": "foil-tiny-vit", "batch_size": 64}, runner)
    steps.negatives(dataset, {"kinds": ["replace_object", "replace_attribute", "swap_object"], "seed": 0}, runner)
    steps.export(dataset, {"eval_percent": 20}, runner)
    return {t: dataset.table(t).manifest()["rows"] for t in (S.URLS, S.RAW, S.SCORES, S.EMBEDDINGS, "duplicates", S.NEG_TEXT, S.TRAIN)}


def test_the_loop_on_s3_gives_the_local_rows_and_foil_sql_reads_it(s3, tmp_path, emoji_server, emoji_dir):
    from pipeline.demo.sample import IMAGE_SUBDIR, emoji_items

    items = emoji_items(emoji_dir, 48)
    urls = tmp_path / "urls.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"url": [f"{emoji_server.url}/{IMAGE_SUBDIR}/{it.image}" for it in items], "caption": [it.caption for it in items]}), urls)

    local = _loop(Dataset(tmp_path / "local"), str(urls), emoji_server.address)
    remote_ds = Dataset("s3://foil-bucket/loop")
    remote = _loop(remote_ds, str(urls), emoji_server.address)
    assert remote == local and local[S.RAW] == local[S.EMBEDDINGS] == 48 and local[S.TRAIN] > 0

    import s3fs

    listed = s3fs.S3FileSystem().find("foil-bucket/loop")
    assert any(p.endswith("train/part-00000.parquet") for p in listed)
    assert not (tmp_path / "s3:").exists()  # nothing written to a local folder named after the url

    same = Catalog(Dataset(tmp_path / "local")).query("SELECT count(*) AS n, sum(length(caption)) AS c FROM curated").to_pylist()
    # `foil sql` in a fresh process and a fresh cache: it builds the catalog from the bucket.
    env = {**os.environ, **s3, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "sql", "--dataset", "s3://foil-bucket/loop", "--format", "json", "SELECT count(*) AS n, sum(length(caption)) AS c FROM curated"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == same

    # Training from the bucket into the bucket (in-process: one worker, no cluster), then
    # `foil eval` of the checkpoint by its s3:// URI, recording its metrics in the bucket.
    from training import jobs
    from training.config import TrainConfig

    cfg = TrainConfig.from_dict({"steps": 4, "batch_size": 4, "checkpoint_every": 2, "log_every": 2, "warmup_steps": 1})
    run_id, result = jobs.train(remote_ds, cfg, "s3://foil-bucket/ckpt", workers=1)
    assert result.model_weights == f"s3://foil-bucket/ckpt/{run_id}/checkpoint_step_0000004/open_clip_model.pt"
    stored = s3fs.S3FileSystem(use_listings_cache=False).find(f"foil-bucket/ckpt/{run_id}")
    assert {p.rsplit("/", 2)[-2] for p in stored if p.endswith("open_clip_model.pt")} == {"checkpoint_step_0000002", "checkpoint_step_0000004"}
    assert any(p.endswith("curve.jsonl") for p in stored) and not [p for p in stored if "/_tmp-" in p]
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "eval", "--dataset", "s3://foil-bucket/loop", "--checkpoint", result.model_weights, "--run-id", run_id],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    recorded = Catalog(remote_ds).query(f"SELECT name, value FROM eval_metrics WHERE run_id = '{run_id}'").to_pylist()
    assert {"image_to_text_R@1", "hard_negative_accuracy"} <= {r["name"] for r in recorded}
    assert Catalog(remote_ds).query("SELECT checkpoint FROM runs").to_pylist() == [{"checkpoint": result.model_weights}]

    # The report, written into the bucket next to the tables, with its images inlined.
    from pipeline.report_html import write_report

    report = write_report(remote_ds)
    assert report.path == "s3://foil-bucket/loop/report.html" and report.images > 0
    page = s3fs.S3FileSystem(use_listings_cache=False).cat_file("foil-bucket/loop/report.html").decode()
    assert page.count("data:image/") >= report.images and "hard_negative_accuracy" in page


_UPLOAD = """
import os, sys, numpy as np, pyarrow as pa
from pipeline.core.store import Dataset
t = Dataset("s3://foil-bucket/killed").table("raw")
blob = np.random.default_rng(0).integers(0, 255, 48 << 20, dtype=np.uint8).tobytes()  # 48 MB: a multipart upload
rows = pa.table({"sample_id": ["a", "b"], "image": [blob[: len(blob) // 2], blob[len(blob) // 2 :]]})
print("uploading", flush=True)
t.write_shard("part-00000", rows)
print("done", flush=True)
"""


def test_sigkill_during_a_shard_upload_leaves_no_visible_shard(s3, tmp_path):
    import s3fs

    env = {**os.environ, **s3}
    proc = subprocess.Popen([sys.executable, "-c", _UPLOAD], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "uploading"
    time.sleep(0.3)  # well inside the upload of 48 MB (several parts)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fs = s3fs.S3FileSystem(use_listings_cache=False)
    objects = fs.find("foil-bucket/killed")
    assert not [p for p in objects if p.endswith("raw/part-00000.parquet")], objects  # not moved into place
    table = Dataset("s3://foil-bucket/killed").table("raw")
    assert table.finished_shards() == {} and table.shard_uris() == []
    # The rerun writes it whole.
    done = subprocess.run([sys.executable, "-c", _UPLOAD], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert table.read_shard("part-00000").num_rows == 2 and list(table.finished_shards()) == ["part-00000"]
