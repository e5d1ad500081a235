"""flows/prefect.yaml against a real Prefect server: deploy every deployment, then let a real
process worker run one of them (`curate/on-demand`) on a small dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.runners import LocalRunner
from pipeline.core.store import Dataset
from pipeline.stages import stage_class
from tests.conftest import free_port, make_raw, wait_for_http

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "FOIL_HOME": str(REPO),
    }
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_for_http(f"http://127.0.0.1:{port}/api/health", 90):
        server.kill()
        pytest.fail("prefect server did not start")
    yield env
    server.terminate()
    server.wait(timeout=30)


def _run(env, *args, timeout=180) -> subprocess.CompletedProcess:
    proc = subprocess.run([PREFECT, "--no-prompt", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_deploy_all_and_run_curate_through_a_worker(tmp_path, prefect_server):
    ds = Dataset(tmp_path / "ds")
    make_raw(ds, shards=1, rows=6)
    LocalRunner(progress=False).run(stage_class("score"), {}, ds, S.RAW, S.SCORES)
    Catalog(ds).refresh()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("curate:\n  min_caption_words: 3\n")  # captions are "caption N": 2 words

    _run(prefect_server, "work-pool", "create", "foil", "--type", "process")
    deployed = _run(prefect_server, "deploy", "--all", "--prefect-file", "flows/prefect.yaml")
    for name in ("crawl/nightly", "end-to-end/weekly", "curate/on-demand"):
        assert name in deployed.stdout
    _run(prefect_server, "deployment", "run", "curate/on-demand", "-p", f"dataset={ds.root}", "-p", f"recipe_path={recipe}")
    _run(prefect_server, "worker", "start", "--pool", "foil", "--run-once", timeout=240)

    funnel = {r["reason"]: r["rows"] for r in Catalog(ds).query("select * from funnel").to_pylist()}
    assert funnel == {"caption_too_short": 6}
