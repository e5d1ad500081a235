"""`runner.gpus_per_actor`: model stages run as an actor pool with that many GPUs each, and each
shard's marker records the GPU Ray gave its actor. Ray is told the machine has two GPUs (a
custom resource count; no GPU is needed), so the placement is Ray's own, as on a GPU node."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flows.recipe import parse_recipe
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset
from tests.conftest import make_raw

REPO = Path(__file__).resolve().parents[3]

DRIVER = textwrap.dedent(
    """
    import json, sys
    import ray
    from flows.recipe import parse_recipe
    from pipeline.core import schema as S
    from pipeline.core.store import Dataset
    from pipeline.stages import stage_class

    ray.init(num_cpus=2, num_gpus=int(sys.argv[2]), include_dashboard=False)
    ds = Dataset(sys.argv[1])
    def run(gpus_per_actor, output):
        runner = parse_recipe({"runner": {"kind": "ray", "gpus_per_actor": gpus_per_actor, "retries": 0}}).runner(progress=False)
        runner.run(stage_class("embed"), {"model": "foil-tiny-vit"}, ds, S.RAW, output)

    run(1, S.EMBEDDINGS)
    shards = ds.table(S.EMBEDDINGS).finished_shards()
    print("RESULT " + json.dumps({name: info.stats.get("gpus") for name, info in shards.items()}))
    try:
        run(3, "embeddings_more_gpus")  # more than the cluster has
    except Exception as exc:
        print("ERROR " + str(exc).splitlines()[0])
    """
)


def test_each_model_actor_gets_its_own_gpu_and_each_shard_records_it(tmp_path):
    make_raw(Dataset(tmp_path / "ds"), shards=4, rows=6)
    out = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "ds"), "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(("RESULT ", "ERROR "))]
    placed = json.loads(lines[0].removeprefix("RESULT "))
    assert sorted(placed) == ["part-00000", "part-00001", "part-00002", "part-00003"]
    assert all(isinstance(g, list) and len(g) == 1 and g[0] in ("0", "1") for g in placed.values()), placed
    # more GPUs per actor than the cluster has: one line naming the field, before any shard runs
    assert lines[1] == "ERROR runner.gpus_per_actor: 3 GPU(s) per actor, but the cluster has 2"
    assert not (tmp_path / "ds" / "embeddings_more_gpus" / "_shards").exists()


def test_gpus_per_actor_is_validated_in_the_recipe():
    assert parse_recipe({"runner": {"gpus_per_actor": 0.5}}).gpus_per_actor == 0.5
    with pytest.raises(ConfigError, match="runner.gpus_per_actor: must be a non-negative number"):
        parse_recipe({"runner": {"gpus_per_actor": "one"}})
    with pytest.raises(ConfigError, match="runner.gpus_per_actor: needs runner.kind ray"):
        parse_recipe({"runner": {"kind": "local", "gpus_per_actor": 1}})
