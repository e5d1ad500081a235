"""The embedding stage: normalised float16 vectors, CLIP scores, one model per worker, and the
CLIP-score rule of the curated view."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.runners import LocalRunner, RayRunner
from pipeline.core.stage import ConfigError
from pipeline.stages import build_stage, stage_class
from pipeline.core.store import Dataset
from tests.conftest import make_emoji_raw


def _vectors(ds: Dataset) -> dict[str, tuple]:
    t = ds.table(S.EMBEDDINGS).read()
    return {r[S.SAMPLE_ID]: (np.array(r[S.IMAGE_EMBEDDING], np.float32), np.array(r[S.TEXT_EMBEDDING], np.float32), r[S.CLIP_SCORE]) for r in t.to_pylist()}


def test_local_embeddings_are_normalised_and_the_model_loads_once(tmp_path, emoji_dir, few_emoji):
    ds = Dataset(tmp_path / "ds")
    make_emoji_raw(ds, emoji_dir, few_emoji[:24], shards=3)
    report = LocalRunner(progress=False).run(stage_class("embed"), {"batch_size": 8}, ds, S.RAW, S.EMBEDDINGS)
    assert not report.failed and report.stats["rows_out"] == 24
    assert report.stats["counts"]["model_loads"] == 1  # one instance served all three shards
    assert ds.table(S.EMBEDDINGS).read().schema.field(S.IMAGE_EMBEDDING).type.list_size == 64
    for img, txt, score in _vectors(ds).values():
        assert abs(np.linalg.norm(img) - 1) < 1e-2 and abs(np.linalg.norm(txt) - 1) < 1e-2
        assert abs(float(img @ txt) - score) < 1e-2


def test_ray_actor_pool_loads_once_per_actor_and_agrees_with_local(tmp_path, emoji_dir, few_emoji, ray_local):
    local, remote = Dataset(tmp_path / "local"), Dataset(tmp_path / "ray")
    make_emoji_raw(local, emoji_dir, few_emoji[:32], shards=4)
    make_emoji_raw(remote, emoji_dir, few_emoji[:32], shards=4)
    LocalRunner(progress=False).run(stage_class("embed"), {}, local, S.RAW, S.EMBEDDINGS)
    report = RayRunner(progress=False).run(stage_class("embed"), {}, remote, S.RAW, S.EMBEDDINGS)
    assert not report.failed
    assert 1 <= report.stats["counts"]["model_loads"] <= 2 < 4  # actors (2 CPUs), not shards
    a, b = _vectors(local), _vectors(remote)
    assert a.keys() == b.keys()
    for sid in a:
        assert np.array_equal(a[sid][0], b[sid][0]) and abs(a[sid][2] - b[sid][2]) < 1e-6


REPO = Path(__file__).resolve().parents[3]
# A fresh process, no cluster anywhere: what a user's `foil embed` (runner: ray) finds.
NO_CLUSTER_PROBE = textwrap.dedent(
    """
    import json, sys
    import ray
    from pipeline.core.runners import RayRunner
    from pipeline.core.store import Dataset
    from pipeline.stages import stage_class
    runner = RayRunner(progress=False, in_process_max_rows=int(sys.argv[2]))
    report = runner.run(stage_class(sys.argv[3]), {}, Dataset(sys.argv[1]), "raw", sys.argv[4])
    print(json.dumps({"rows": report.stats["rows_in"], "in_process": runner.ran_in_process, "ray": ray.is_initialized()}))
    """
)


def test_without_a_cluster_a_model_stage_runs_in_process_at_any_size(tmp_path, emoji_dir, few_emoji):
    """Embedding uses every core in one process (torch's threads): past the row count that
    would start an embedded Ray for other stages, it still runs here, and starts no Ray."""
    ds = Dataset(tmp_path / "ds")
    make_emoji_raw(ds, emoji_dir, few_emoji[:12], shards=2)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-c", NO_CLUSTER_PROBE, ds.root, "4", "embed", S.EMBEDDINGS],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"rows": 12, "in_process": True, "ray": False}


def test_clip_score_threshold_in_the_curated_view(tmp_path, emoji_dir, few_emoji):
    ds = Dataset(tmp_path / "ds")
    make_emoji_raw(ds, emoji_dir, few_emoji[:20], shards=2)
    runner = LocalRunner(progress=False)
    runner.run(stage_class("score"), {}, ds, S.RAW, S.SCORES)
    cat = Catalog(ds)
    cat.refresh()  # before embedding: the placeholder keeps the view working
    assert cat.query("select count(*) n from curated").column("n")[0].as_py() == 20
    runner.run(stage_class("embed"), {}, ds, S.RAW, S.EMBEDDINGS)
    scores = sorted(v[2] for v in _vectors(ds).values())
    median = scores[len(scores) // 2]
    cat.set_thresholds({"min_clip_score": median})
    cat.refresh()
    funnel = {r["reason"]: r["rows"] for r in cat.query("select * from funnel").to_pylist()}
    assert funnel.get("low_clip_score", 0) == sum(1 for s in scores if s < median)
    assert funnel["kept"] == 20 - funnel.get("low_clip_score", 0) - funnel.get("duplicate:sha256", 0)


def test_bad_embed_config_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"embed\.model: unknown model 'ViT-Nope'"):
        build_stage("embed", {"model": "ViT-Nope"})
    with pytest.raises(ConfigError, match=r"embed\.pretrained: .* is not a file"):
        build_stage("embed", {"pretrained": str(tmp_path / "missing.pt")})
