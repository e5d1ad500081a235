"""`foil submit` against a real Ray head started with `ray start --head` on 127.0.0.1."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.core import schema as S
from pipeline.core.store import Dataset
from tests.conftest import free_port, wait_for_http

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture
def ray_head(tmp_path):
    gcs, dashboard = free_port(), free_port()
    # The job agent needs its own ports: an embedded Ray that other tests started in this session
    # holds the defaults (52365...), and a head whose agent cannot bind never takes a job.
    agent_ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                   f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
    # its own temp dir: `ray start` records the cluster there, not in /tmp/ray where other
    # processes would find it (short, because Ray's socket paths must fit in 107 characters)
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--temp-dir={temp_dir}", f"--port={gcs}", "--node-ip-address=127.0.0.1", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=2", "--disable-usage-stats", *agent_ports],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{dashboard}"
    if not wait_for_http(f"{address}/api/version", 120):
        head.kill()
        pytest.fail("ray head did not start")
    yield address
    head.terminate()  # --block: terminating it stops the cluster it started
    head.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)
    current = Path("/tmp/ray/ray_current_cluster")  # `ray start` may record itself here too
    if current.exists() and current.read_text().strip() == f"127.0.0.1:{gcs}":
        current.unlink()


def test_submit_training_streams_logs_and_succeeds(tmp_path, ray_head, emoji_dir, few_emoji):
    rows = {name: [] for name in S.TRAIN_SCHEMA.names}
    for i, it in enumerate(few_emoji[:16]):
        for col, value in ((S.SAMPLE_ID, f"{i:016x}"), (S.CAPTION, it.caption), (S.NEG_CAPTION, None), (S.NEG_KIND, None), (S.SPLIT, "train"),
                           (S.IMAGE, (emoji_dir / "img/google/64" / it.image).read_bytes()), (S.NEG_IMAGE_COL, None)):
            rows[col].append(value)
    ds = Dataset(tmp_path / "ds")
    ds.table(S.TRAIN).write_shard("part-00000", pa.table(rows, schema=S.TRAIN_SCHEMA))
    ds.table(S.TRAIN).write_manifest("export", {}, [S.RAW])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: {steps: 4, batch_size: 4, checkpoint_every: 2, log_every: 1, warmup_steps: 1}\n")

    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "submit", "--address", ray_head, "--dataset", ds.root, "--config", str(recipe),
         "--out", str(tmp_path / "ckpt"), "--python", sys.executable],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[foil train] step 4/4" in proc.stdout  # the job's own log lines, streamed back
    assert "SUCCEEDED" in proc.stdout.splitlines()[-1]
    assert list((tmp_path / "ckpt").glob("*/checkpoint_step_0000004/open_clip_model.pt"))


def test_submit_to_nothing_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "submit", "--address", f"http://127.0.0.1:{free_port()}", "--dataset", "d", "--out", "o"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "cannot reach a Ray job server" in proc.stderr and "Traceback" not in proc.stderr
