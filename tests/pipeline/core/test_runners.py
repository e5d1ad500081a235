"""Runners: resume, retries, recorded failures, Ray parity, and SIGKILL safety."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import schema as S
from pipeline.core.runners import LocalRunner, RayRunner
from pipeline.core.stage import ConfigError, Stage, register
from pipeline.core.store import Dataset
from pipeline.stages import stage_class
from tests.conftest import make_raw, sigkill_after_shards

REPO = Path(__file__).resolve().parents[3]


def _scores(ds: Dataset) -> list[tuple]:
    t = ds.table(S.SCORES).read(columns=[S.SAMPLE_ID, S.SHA256, S.PHASH])
    return sorted(zip(*(t[c].to_pylist() for c in t.column_names)))


def test_local_runner_writes_every_shard_and_resumes(tmp_path):
    ds = Dataset(tmp_path / "ds")
    make_raw(ds, shards=3, rows=5)
    first = LocalRunner(progress=False).run(stage_class("score"), {}, ds, S.RAW, S.SCORES)
    assert (first.shards_total, first.shards_skipped, len(first.results)) == (3, 0, 3)
    assert first.stats["rows_out"] == 15
    manifest = ds.table(S.SCORES).manifest()
    assert manifest["complete"] and manifest["rows"] == 15 and manifest["inputs"] == [S.RAW]
    assert manifest["config"] == {"stage": "score", "params": {}}

    (tmp_path / "ds" / S.SCORES / "_shards" / "part-00001.json").unlink()  # as if killed before the marker
    again = LocalRunner(progress=False).run(stage_class("score"), {}, ds, S.RAW, S.SCORES)
    assert (again.shards_skipped, [r.shard for r in again.results]) == (2, ["part-00001"])
    assert len(_scores(ds)) == 15


def test_changed_config_needs_overwrite(tmp_path):
    ds = Dataset(tmp_path / "ds")
    make_raw(ds, shards=1, rows=2)
    catalog_free = {"kinds": ["replace_object"], "seed": 0}
    LocalRunner(progress=False).run(stage_class("negatives"), catalog_free, ds, S.RAW, S.NEG_TEXT)
    with pytest.raises(ConfigError, match="different negatives config; rerun with --overwrite"):
        LocalRunner(progress=False).run(stage_class("negatives"), {**catalog_free, "seed": 1}, ds, S.RAW, S.NEG_TEXT)
    LocalRunner(progress=False).run(stage_class("negatives"), {**catalog_free, "seed": 1}, ds, S.RAW, S.NEG_TEXT, overwrite=True)


@register
class _FlakyStage(Stage):
    """Fails the first `failures` times it sees each shard (counted in files under `state`)."""

    name = "flaky_test"
    output_schema = pa.schema([(S.SAMPLE_ID, pa.string())])
    input_columns = [S.SAMPLE_ID, S.URL]

    def __init__(self, state: str = "", failures: int = 1):
        super().__init__()
        self.state, self.failures = state, failures

    def process(self, batch):
        key = Path(self.state) / batch.column(S.URL)[0].as_py().split("/")[3]
        seen = int(key.read_text()) if key.exists() else 0
        key.write_text(str(seen + 1))
        if seen < self.failures:
            raise RuntimeError(f"flaky failure {seen + 1}")
        yield pa.RecordBatch.from_pydict({S.SAMPLE_ID: batch.column(S.SAMPLE_ID)}, schema=self.output_schema)


def test_failed_shards_are_retried_then_recorded(tmp_path):
    ds = Dataset(tmp_path / "ds")
    make_raw(ds, shards=2, rows=2)
    (tmp_path / "state").mkdir()
    ok = LocalRunner(retries=2, progress=False).run(stage_class("flaky_test"), {"state": str(tmp_path / "state"), "failures": 1}, ds, S.RAW, "flaky")
    assert [r.attempts for r in ok.results] == [2, 2] and not ok.failed

    (tmp_path / "state2").mkdir()
    bad = LocalRunner(retries=1, progress=False).run(stage_class("flaky_test"), {"state": str(tmp_path / "state2"), "failures": 5}, ds, S.RAW, "flaky2")
    assert len(bad.failed) == 2
    assert "flaky failure 2" in bad.failed[0].error
    manifest = ds.table("flaky2").manifest()
    assert {s["status"] for s in manifest["shards"].values()} == {"pending"} and not manifest["complete"]


def test_ray_runner_matches_local_runner(tmp_path, ray_local):
    local, remote = Dataset(tmp_path / "local"), Dataset(tmp_path / "ray")
    make_raw(local, shards=4, rows=6)
    make_raw(remote, shards=4, rows=6)
    LocalRunner(progress=False).run(stage_class("score"), {}, local, S.RAW, S.SCORES)
    report = RayRunner(progress=False).run(stage_class("score"), {}, remote, S.RAW, S.SCORES)
    assert not report.failed and report.stats["rows_out"] == 24
    assert _scores(local) == _scores(remote)


def _visible_parquet_is_whole(table_dir: Path) -> int:
    """Every committed-looking file reads completely; returns total visible rows via DuckDB."""
    for f in table_dir.glob("*.parquet"):
        pq.read_table(f)  # raises on a truncated file
    if not list(table_dir.glob("*.parquet")):
        return 0
    return duckdb.sql(f"select count(*) from read_parquet('{table_dir}/*.parquet')").fetchall()[0][0]


RUN_SCORE = textwrap.dedent(
    """
    import sys
    from pipeline.core.runners import LocalRunner
    from pipeline.core.store import Dataset
    from pipeline.stages import stage_class
    LocalRunner(progress=False).run(stage_class("score"), {}, Dataset(sys.argv[1]), "raw", "scores")
    """
)


def test_sigkill_during_a_stage_then_rerun_gives_the_uninterrupted_result(tmp_path):
    shards = 24
    ds, reference = Dataset(tmp_path / "killed"), Dataset(tmp_path / "reference")
    make_raw(ds, shards=shards, rows=30, size=96)
    make_raw(reference, shards=shards, rows=30, size=96)
    LocalRunner(progress=False).run(stage_class("score"), {}, reference, S.RAW, S.SCORES)

    markers = tmp_path / "killed" / S.SCORES / "_shards"
    kill_after = random.Random(os.getpid()).randint(2, shards - 4)
    done = sigkill_after_shards([sys.executable, "-c", RUN_SCORE, ds.root], markers, kill_after, REPO)
    assert 0 < done < shards
    visible = _visible_parquet_is_whole(tmp_path / "killed" / S.SCORES)
    assert visible >= done * 30

    LocalRunner(progress=False).run(stage_class("score"), {}, ds, S.RAW, S.SCORES)
    assert _scores(ds) == _scores(reference)
    assert _visible_parquet_is_whole(tmp_path / "killed" / S.SCORES) == shards * 30


WRITE_BIG_SHARD = textwrap.dedent(
    """
    import sys, os
    import pyarrow as pa
    from pipeline.core.store import Dataset
    # distinct random blobs: parquet cannot dictionary-encode or compress them away
    rows = pa.table({"sample_id": [str(i) for i in range(300)], "image": [os.urandom(1 << 19) for _ in range(300)]})
    Dataset(sys.argv[1]).table("big").write_shard("part-00000", rows)
    """
)


def test_sigkill_in_the_middle_of_a_shard_write_leaves_nothing_visible(tmp_path):
    ds = Dataset(tmp_path / "ds")
    tmp_dir = tmp_path / "ds" / "big" / "_tmp"
    proc = subprocess.Popen([sys.executable, "-c", WRITE_BIG_SHARD, ds.root], cwd=REPO)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if tmp_dir.exists() and any(f.stat().st_size > (8 << 20) for f in tmp_dir.iterdir()):
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the write finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    table_dir = tmp_path / "ds" / "big"
    assert list(table_dir.glob("*.parquet")) == []  # the half-written file is only in _tmp/
    assert not (table_dir / "_shards" / "part-00000.json").exists()
    assert ds.table("big").clean_tmp() == 1
    ds.table("big").write_shard("part-00000", pa.table({"sample_id": ["a"], "image": [b"x"]}))
    assert _visible_parquet_is_whole(table_dir) == 1


# -- Ray only when it pays (issue 15) ---------------------------------------------------------
def test_running_local_head_needs_a_recorded_head_that_answers(tmp_path):
    import socket

    from pipeline.core.runners import running_local_head

    record = tmp_path / "ray_current_cluster"
    assert running_local_head(str(record)) is None  # nothing recorded
    record.write_text("not an address\n")
    assert running_local_head(str(record)) is None
    with socket.socket() as listener:  # a port that answers, as a live GCS does
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        record.write_text(address + "\n")
        assert running_local_head(str(record)) == address
    assert running_local_head(str(record)) is None  # recorded, but gone (a `ray stop` or a crash)


ATTACH_PROBE = textwrap.dedent(
    """
    import json, sys
    import ray
    from pipeline.core.runners import RayRunner
    from pipeline.core.store import Dataset
    from pipeline.stages import stage_class
    runner = RayRunner(progress=False)
    report = runner.run(stage_class("score"), {}, Dataset(sys.argv[1]), "raw", "scores")
    print(json.dumps({"rows": report.stats["rows_out"], "in_process": runner.ran_in_process,
                      "gcs": ray.get_runtime_context().gcs_address}))
    """
)


def test_a_runner_attaches_to_a_running_ray_head(tmp_path):
    from pipeline.core.runners import RAY_ADDRESS_FILE, running_local_head
    from tests.conftest import free_port, ray_agent_ports

    ray_bin = str(Path(sys.executable).with_name("ray"))
    # its own temp dir (short: Ray's socket paths must fit in 107 characters), so no other
    # process on this machine finds and attaches to this test's head
    temp_dir = Path(tempfile.mkdtemp(prefix="rayh", dir="/tmp"))
    head, address = None, None
    try:
        # Ray gives a starting node a fixed 30 s to register; on a loaded machine a start can miss
        # that and exit, so a start is tried up to three times.
        for _ in range(3):
            port = free_port()
            head = subprocess.Popen(
                [ray_bin, "start", "--head", "--block", f"--temp-dir={temp_dir}", f"--port={port}", "--node-ip-address=127.0.0.1",
                 "--num-cpus=1", "--include-dashboard=false", f"--dashboard-port={free_port()}", "--disable-usage-stats",
                 *ray_agent_ports()],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            deadline = time.time() + 120
            while address is None and time.time() < deadline and head.poll() is None:
                address = running_local_head(str(temp_dir / RAY_ADDRESS_FILE))  # what auto-detection reads
                time.sleep(0.5)
            if address is not None:
                break
            head.kill()
            head.wait(timeout=60)
        assert address is not None and address.endswith(f":{port}"), "ray start --head did not come up"
        ds = Dataset(tmp_path / "ds")
        make_raw(ds, shards=2, rows=3)
        # 6 rows would run in-process; a running cluster is used all the same
        proc = subprocess.run([sys.executable, "-c", ATTACH_PROBE, ds.root], cwd=REPO, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "RAY_ADDRESS": address})
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out == {"rows": 6, "in_process": False, "gcs": address}
    finally:
        if head is not None and head.poll() is None:
            head.terminate()  # --block: terminating it stops the cluster it started
            head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
