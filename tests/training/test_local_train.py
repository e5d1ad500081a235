"""One worker, no cluster: `jobs.train` trains in this process (training/local_train.py), with
the run folder, checkpoints and resume of the Ray path. SIGKILL mid-run, rerun, and it continues
at the newest complete checkpoint."""

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
import torch

from pipeline.core import schema as S
from pipeline.core.store import Dataset
from pipeline.models import factory as M
from training import jobs
from training.ray_train import read_curve
from tests.training.test_ray_train import _train_table  # negatives on odd rows, images on every third, 1 in 5 eval

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"steps": 40, "batch_size": 4, "checkpoint_every": 5, "log_every": 1, "warmup_steps": 1}

TRAIN = textwrap.dedent(
    f"""
    import sys
    from pipeline.core.store import Dataset
    from training import jobs
    from training.config import TrainConfig
    jobs.train(Dataset(sys.argv[1]), TrainConfig.from_dict({CONFIG!r}), sys.argv[2], workers=1, name="local-test")
    import ray
    print("RAY", ray.is_initialized() if "ray" in sys.modules else False)
    """
)


def _events(curve: Path) -> list[dict]:
    return [json.loads(line) for line in curve.read_text().splitlines() if line.strip()] if curve.exists() else []


def _dataset(root: Path, emoji_dir: Path, items) -> Dataset:
    ds = Dataset(root)
    ds.table(S.TRAIN).write_shard("part-00000", _train_table(emoji_dir, items))
    ds.table(S.TRAIN).write_manifest("export", {}, [S.RAW])
    return ds


def test_one_worker_without_a_cluster_trains_here_and_anything_else_goes_to_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(jobs, "cluster_address", lambda: None)
    assert jobs.runs_in_process(1) and not jobs.runs_in_process(2) and not jobs.runs_in_process(1, address="10.0.0.1:6379")
    monkeypatch.setattr(jobs, "cluster_address", lambda: "127.0.0.1:6379")  # RAY_ADDRESS, or a live `ray start --head`
    assert not jobs.runs_in_process(1)


def test_sigkill_then_resume_in_process_continues_at_the_newest_complete_checkpoint(tmp_path, emoji_dir, few_emoji):
    ds = _dataset(tmp_path / "ds", emoji_dir, few_emoji)
    out = tmp_path / "ckpt"
    cmd = [sys.executable, "-c", TRAIN, ds.root, str(out)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    curve = None
    while time.time() < deadline and proc.poll() is None:
        curves = list(out.glob("*/curve.jsonl"))
        curve = curves[0] if curves else None
        if curve and list(curve.parent.glob("checkpoint_step_*")) and any(e.get("step", 0) >= 7 and "event" not in e for e in _events(curve)):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(e["step"] for e in _events(curve) if "event" not in e)
    assert 7 <= killed_at < CONFIG["steps"]
    run = curve.parent
    # a checkpoint cut off while being staged is not one to resume from
    (run / "_tmp-checkpoint_step_0000099").mkdir()
    (run / "checkpoint_step_0000098").mkdir()
    (run / "checkpoint_step_0000098" / "open_clip_model.pt").write_bytes(b"")  # train_state.pt missing

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RAY False" in done.stdout and "(in this process)" in done.stdout  # no Ray started at all

    starts = [e for e in _events(curve) if e.get("event") == "start"]
    assert [s["step"] for s in starts][0] == 0 and starts[-1]["world_size"] == 1
    resumed_at = starts[-1]["step"]
    assert resumed_at % CONFIG["checkpoint_every"] == 0 and 5 <= resumed_at <= killed_at
    after = [e["step"] for e in _events(curve)[_events(curve).index(starts[-1]) + 1 :] if "event" not in e]
    assert after == list(range(resumed_at + 1, CONFIG["steps"] + 1))  # no step skipped, none repeated
    assert [r["step"] for r in read_curve(curve)] == list(range(1, CONFIG["steps"] + 1))
    # the last two checkpoints are kept (the incomplete step-98 folder sorts last and stays, unused)
    assert sorted(p.name for p in run.glob("checkpoint_step_00000[0-4]*")) == ["checkpoint_step_0000035", "checkpoint_step_0000040"]

    weights = run / "checkpoint_step_0000040" / "open_clip_model.pt"
    M.register_foil_configs()
    loaded, _, _ = open_clip.create_model_and_transforms("foil-tiny-vit", pretrained=str(weights))
    mine = M.create_model("foil-tiny-vit")
    mine.load_state_dict(torch.load(weights, weights_only=True)["state_dict"])
    text = M.tokenizer("foil-tiny-vit")(["a red apple", "a blue car"])
    with torch.no_grad():
        # the same weights: open_clip's text path on foil's model (foil's own drops the padding, see ShortTextCLIP)
        assert torch.equal(loaded.eval().encode_text(text), open_clip.CLIP.encode_text(mine.eval(), text))
    torch.manual_seed(0)
    assert not torch.equal(M.create_model("foil-tiny-vit").state_dict()["visual.proj"], mine.state_dict()["visual.proj"])
