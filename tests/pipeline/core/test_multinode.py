"""A Ray cluster of three nodes on this machine (`ray start --head`, then two `ray start
--address`, each worker node with one CPU and its own custom resource; the head has no CPU, so
every task runs on a worker node). foil's stages and training attach to it with the dataset in
a bucket (moto's S3 server on loopback, the storage the nodes share), spread their shards over
both nodes (each shard's marker records its node), train with one worker per node into the same
bucket, and a stage that loses a node mid-way finishes on the other with the rows of an
undisturbed run. Training goes through `foil submit`, as a Ray Job on the head."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3fs

from pipeline.core import schema as S
from pipeline.core.store import Dataset
from tests.conftest import free_port, ray_agent_ports

REPO = Path(__file__).resolve().parents[3]
RAY = str(Path(sys.executable).with_name("ray"))
# Notice a dead node within seconds, not after Ray's default 30 s of missed health checks (with
# room for a loaded machine: a node that answers slowly is not dead).
FAST_FAILURE = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3", "RAY_health_check_timeout_ms": "5000"}

DRIVER = r"""
import json, sys, time
import pyarrow as pa, pyarrow.parquet as pq
from flows.environment import apply_defaults
apply_defaults()
from pipeline import steps
from pipeline.core import schema as S
from pipeline.core.runners import RayRunner, ensure_ray
from pipeline.core.store import Dataset
from pipeline.demo.sample import IMAGE_SUBDIR, ImageServer, _QuietHandler, emoji_items, fetch_emoji_sample

work, what = sys.argv[1], sys.argv[2]
ensure_ray()  # attaches: RAY_ADDRESS is the test's head
import ray
sample = fetch_emoji_sample()
items = emoji_items(sample, 64)

def nodes(ds, table):
    return {n: i.stats.get("node") for n, i in ds.table(table).finished_shards().items()}

class Slow(_QuietHandler):
    def do_GET(self):  # a slow host: shards take long enough that both nodes hold one when one dies
        time.sleep(0.25 if what == "killed" else 0)
        super().do_GET()

with ImageServer(sample, handler=Slow) as server:
    urls = f"{work}/urls.parquet"
    pq.write_table(pa.table({"url": [f"{server.url}/{IMAGE_SUBDIR}/{it.image}" for it in items], "caption": [it.caption for it in items]}), urls)
    runner = RayRunner(retries=3, progress=False)
    params = {"image_size": 32, "thread_count": 2, "allow_addresses": [server.address]}
    out = {"cluster_nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]}
    if what == "spread":  # the dataset and the checkpoints in the bucket the nodes share
        ds = Dataset("s3://foil-bucket/multinode")
        steps.crawl(ds, [urls], params, runner, shard_rows=8)
        steps.embed(ds, {"model": "foil-tiny-vit", "batch_size": 8}, runner)
        steps.score(ds, runner)
        steps.curate(ds, {})
        steps.export(ds, {"eval_percent": 10}, runner)
        out["crawl_nodes"] = nodes(ds, S.RAW)
        out["embed_nodes"] = nodes(ds, S.EMBEDDINGS)
        out["raw"] = sorted(map(list, zip(*ds.table(S.RAW).read(columns=[S.CAPTION, S.STATUS, S.SHA256]).to_pydict().values())))
    else:  # "killed": the same crawl; the test kills a node once two shards are committed
        ds = Dataset(f"{work}/killed")
        print("started", flush=True)
        report = steps.crawl(ds, [urls], {**params, "thread_count": 1}, runner, shard_rows=8)
        out["raw"] = sorted(map(list, zip(*ds.table(S.RAW).read(columns=[S.CAPTION, S.STATUS, S.SHA256]).to_pydict().values())))
        out["attempts"] = max(r["attempts"] for r in report["results"])
        out["lost"] = sum(1 for r in report["results"] if r["attempts"] > 1)
        out["alive_after"] = sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)
print("RESULT " + json.dumps(out), flush=True)
"""


def _start(args: list[str], env: dict[str, str], leftovers: tuple[str, ...]) -> None:
    """`ray start`, up to three times. Under load a node's raylet can miss its registration
    window with the GCS and the start exits; what it left running (the processes whose command
    line holds every one of `leftovers`) is killed before the next try.
    Not `--block`: under load one of the head's helper processes (the Ray client server) may
    time out and exit, and `--block` would then take the whole node down with it."""
    for _ in range(3):
        out = subprocess.run([RAY, "start", *args], env=env, capture_output=True, text=True, timeout=300)
        if out.returncode == 0:
            return
        _kill(_with_children(_pids(*leftovers)))
        time.sleep(2)
    raise AssertionError(out.stderr[-2000:])


def _pids(*needles: str) -> list[int]:
    """Processes whose command line holds every needle (this cluster's temp dir, a node's resource)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if all(n in args for n in needles):
                pids.append(int(entry.name))
    return pids


def _with_children(pids: list[int]) -> list[int]:
    """`pids` and all their descendants: a node's raylet and the worker processes it started
    (which would otherwise finish the task they hold and return its result directly)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(pids), list(pids)
    while frontier:
        p = frontier.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in found:
                found.add(child)
                frontier.append(child)
    return sorted(found)


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_nodes(env: dict[str, str], address: str, n: int, timeout: float = 300) -> None:
    probe = f"import ray; ray.init(address={address!r}, log_to_driver=False); print(sum(1 for x in ray.nodes() if x['Alive']))"
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
        if out.returncode == 0 and out.stdout.strip().isdigit() and int(out.stdout.strip()) >= n:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster did not reach {n} nodes")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3):
    """Head (no CPU) + two worker nodes, in their own temp dir so no other test attaches, and
    so that its processes (and only those) can be found to kill a node and to stop it. Every
    node has the bucket's environment (endpoint and keys), as a user's nodes would."""
    temp = str(tmp_path_factory.mktemp("ray"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(FAST_FAILURE)
    env["RAY_raylet_start_wait_time_s"] = "120"  # a loaded machine registers a node slowly
    dashboard = free_port()
    try:
        _start(["--head", f"--port={port}", "--num-cpus=0", f"--temp-dir={temp}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}", *ray_agent_ports()], env, (temp,))
        for name in ("node_a", "node_b"):
            _start([f"--address={address}", "--num-cpus=1", f"--resources={json.dumps({name: 1})}", *ray_agent_ports()], env, (temp, name))
        _wait_nodes(env, address, 3)
        yield {"address": address, "jobs": f"http://127.0.0.1:{dashboard}", "env": {**env, "RAY_ADDRESS": address},
               "kill_node": lambda name: _kill(_with_children(_pids(temp, name)))}
    finally:
        # Never `ray stop`: it would stop every Ray on the machine, not only this cluster.
        _kill(_pids(temp))


def _result(stdout: str) -> dict:
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, stdout[-2000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_stages_and_training_spread_over_two_nodes_and_survive_losing_one(cluster, tmp_path):
    env = cluster["env"]
    run = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path), "spread"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    spread = _result(run.stdout)
    workers = set(spread["cluster_nodes"])
    assert len(workers) == 2
    for stage in ("crawl_nodes", "embed_nodes"):
        assert set(spread[stage].values()) == workers, (stage, spread[stage])  # every shard on a worker node, both used
    # Training as a user submits it to a cluster: `foil submit` runs `foil train` as a Ray Job on
    # the head, which places one Ray Train worker on each node and checkpoints into the bucket.
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: {steps: 4, batch_size: 8, use_negatives: false, checkpoint_every: 2, log_every: 1, warmup_steps: 1}\n")
    sub = subprocess.run(
        [sys.executable, "-m", "flows.cli", "submit", "--address", cluster["jobs"], "--dataset", "s3://foil-bucket/multinode", "--config", str(recipe),
         "--out", "s3://foil-bucket/multinode-ckpt", "--workers", "2", "--python", sys.executable],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert sub.returncode == 0, sub.stdout[-3000:] + sub.stderr[-3000:]
    assert "[foil train] step 4/4" in sub.stdout and "SUCCEEDED" in sub.stdout.splitlines()[-1]  # the job's log, streamed back
    bucket = s3fs.S3FileSystem(use_listings_cache=False)
    (run,) = Dataset("s3://foil-bucket/multinode").table(S.RUNS).read(columns=[S.RUN_ID, "checkpoint", "steps"]).to_pylist()
    assert run["steps"] == 4
    assert run["checkpoint"] == f"s3://foil-bucket/multinode-ckpt/{run[S.RUN_ID]}/checkpoint_step_0000004/open_clip_model.pt"
    curve = bucket.cat_file(f"foil-bucket/multinode-ckpt/{run[S.RUN_ID]}/curve.jsonl").decode().splitlines()
    start = [json.loads(l) for l in curve if '"event": "start"' in l][-1]
    assert start["world_size"] == 2 and sorted(set(start["nodes"])) == sorted(workers)  # one training worker per node
    stored = bucket.find(f"foil-bucket/multinode-ckpt/{run[S.RUN_ID]}")
    assert {p.rsplit("/", 2)[-2] for p in stored if p.endswith("open_clip_model.pt")} == {"checkpoint_step_0000002", "checkpoint_step_0000004"}
    assert any(p.endswith("raw/part-00000.parquet") for p in bucket.find("foil-bucket/multinode"))
    assert not (tmp_path / "s3:").exists() and not (REPO / "s3:").exists()  # nothing in a local folder named after the url

    # The same crawl again; once two shards are committed, node_b dies (SIGKILL of its raylet and workers).
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), "killed"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    markers = tmp_path / "killed" / "raw" / "_shards"
    deadline = time.time() + 300
    while time.time() < deadline and not (markers.exists() and len(list(markers.glob("*.json"))) >= 2):
        time.sleep(0.02)
    assert len(list(markers.glob("*.json"))) < 8, "the crawl finished before the node could be killed"
    cluster["kill_node"]("node_b")  # its raylet and every worker process it started
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    killed = _result(out)
    # The same rows as the undisturbed crawl (sample ids differ: each run serves on its own port).
    assert killed["raw"] == spread["raw"] and len(killed["raw"]) == 64
    # node_b really died during the stage, and the stage finished on node_a. (Whether a shard
    # was in flight on node_b at that instant is timing; `lost` counts those that were rerun.)
    assert killed["alive_after"] == 1, killed
