"""A real 2-worker Ray Train job on the tiny model, killed with SIGKILL mid-run and rerun: it
resumes at the last checkpoint's step, ends with an open_clip-loadable checkpoint of trained
weights, and records one run, its curve (each step once) and the eval `foil eval` would give."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import open_clip
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.store import Dataset
from pipeline.models import factory as M
from training import jobs
from training.evaluate import evaluate
from training.ray_train import negative_image_rows, read_curve

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"steps": 12, "batch_size": 4, "checkpoint_every": 3, "log_every": 1, "warmup_steps": 1}

TRAIN = textwrap.dedent(
    f"""
    import sys
    from pipeline.core.store import Dataset
    from training import jobs
    from training.ray_train import TrainConfig
    jobs.train(Dataset(sys.argv[1]), TrainConfig.from_dict({CONFIG!r}), sys.argv[2], workers=2, name="resume-test")
    """
)


def _events(curve: Path) -> list[dict]:
    return [json.loads(line) for line in curve.read_text().splitlines() if line.strip()] if curve.exists() else []


def test_sigkill_then_resume_continues_at_the_checkpoint_step(tmp_path, emoji_dir, few_emoji):
    items = few_emoji[:40]

    def image(it) -> bytes:
        return (emoji_dir / "img/google/64" / it.image).read_bytes()

    rows = {name: [] for name in S.TRAIN_SCHEMA.names}
    for i, it in enumerate(items):
        following = items[(i + 1) % len(items)]
        rows[S.SAMPLE_ID].append(f"{i:016x}")
        rows[S.CAPTION].append(it.caption)
        rows[S.NEG_CAPTION].append(following.caption if i % 2 else None)
        rows[S.NEG_KIND].append("replace_object" if i % 2 else None)
        rows[S.SPLIT].append("eval" if i % 5 == 0 else "train")
        rows[S.IMAGE].append(image(it))
        # every third row has a negative image (the next emoji): the Ray path encodes and masks them
        rows[S.NEG_IMAGE_COL].append(image(following) if i % 3 == 0 else None)
    ds = Dataset(tmp_path / "ds")
    ds.table(S.TRAIN).write_shard("part-00000", pa.table(rows, schema=S.TRAIN_SCHEMA))
    ds.table(S.TRAIN).write_manifest("export", {}, [S.RAW])
    assert negative_image_rows(ds.table(S.TRAIN).shard_uris()) == 14  # rows 0, 3, ..., 39
    out = tmp_path / "ckpt"
    cmd = [sys.executable, "-c", TRAIN, ds.root, str(out)]

    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    deadline = time.time() + 300
    curve = None
    while time.time() < deadline and proc.poll() is None:
        curves = list(out.glob("*/curve.jsonl"))
        curve = curves[0] if curves else None
        # Killed once Ray has recorded a checkpoint (what a rerun resumes from) and training went past it.
        snapshot = curve.parent / "checkpoint_manager_snapshot.json" if curve else None
        if snapshot and snapshot.exists() and any(e.get("step", 0) >= 5 and "event" not in e for e in _events(curve)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
    proc.wait()
    killed_at = max(e["step"] for e in _events(curve) if "event" not in e)
    assert 5 <= killed_at < CONFIG["steps"]

    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    starts = [e for e in _events(curve) if e.get("event") == "start"]
    assert [s["step"] for s in starts][0] == 0
    resumed_at = starts[-1]["step"]
    assert resumed_at % CONFIG["checkpoint_every"] == 0 and 3 <= resumed_at <= killed_at
    assert starts[-1]["world_size"] == 2
    after = [e["step"] for e in _events(curve)[_events(curve).index(starts[-1]) + 1 :] if "event" not in e]
    assert after == list(range(resumed_at + 1, CONFIG["steps"] + 1))  # no step skipped, none repeated
    assert [r["step"] for r in read_curve(curve)] == list(range(1, CONFIG["steps"] + 1))

    run_dir = curve.parent
    weights = (run_dir / "checkpoint_step_0000012" / "open_clip_model.pt").resolve()
    M.register_foil_configs()  # foil's architectures, as a user does before loading (README)
    loaded, _, _ = open_clip.create_model_and_transforms("foil-tiny-vit", pretrained=str(weights))
    saved = torch.load(weights, weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in loaded.state_dict().items())
    mine = M.create_model("foil-tiny-vit")
    mine.load_state_dict(saved)
    text = M.tokenizer("foil-tiny-vit")(["a red apple", "a blue car"])
    with torch.no_grad():
        # the same weights: open_clip's text path on foil's model (foil's own drops the padding, see ShortTextCLIP)
        assert torch.equal(loaded.eval().encode_text(text), open_clip.CLIP.encode_text(mine.eval(), text))
    torch.manual_seed(0)  # rank 0 seeds with 0: trained weights are not the initial ones
    assert not torch.equal(M.create_model("foil-tiny-vit").state_dict()["visual.proj"], saved["visual.proj"])

    # One run recorded (the killed attempt never finished), with each step of its curve once.
    run_id = run_dir.name
    cat = Catalog(ds)
    assert cat.query("select run_id, checkpoint, steps from runs").to_pylist() == [{"run_id": run_id, "checkpoint": str(weights), "steps": 12}]
    logged = cat.query(f"select step from train_metrics where run_id = '{run_id}' and name = 'loss' order by step").column("step").to_pylist()
    assert logged == list(range(1, CONFIG["steps"] + 1))
    # jobs.evaluate (what `foil eval` runs) scores that checkpoint on the eval split and records it
    metrics = jobs.evaluate(ds, str(weights), "foil-tiny-vit", run_id)
    table = ds.table(S.TRAIN).read()
    assert metrics["eval_rows"] == 8 and metrics == pytest.approx(evaluate(loaded, "foil-tiny-vit", table.filter(pc.equal(table[S.SPLIT], "eval"))))
    recorded = Catalog(ds).query(f"select name, value from eval_metrics where run_id = '{run_id}'").to_pylist()
    assert {r["name"]: r["value"] for r in recorded} == pytest.approx(metrics)
    assert {"image_to_text_R@1", "text_to_image_R@1", "hard_negative_accuracy"} <= set(metrics)
