"""Training in this process, without Ray: one worker, on a machine with no cluster to attach to.

Ray Train's start-up on a laptop (a local cluster, its controller, a worker group, a process
group) costs 20-30 s before the first step, for a job that one process does as well. `fit_local`
runs the same loop (`training.loop.train_loop`), loss and optimizer, writes the same run folder
(`curve.jsonl`, `checkpoint_step_NNNNNNN/` with `open_clip_model.pt` and `train_state.pt`, the
last two kept) and resumes from it the same way: a rerun with the same output and run name starts
at the newest complete checkpoint. `training.jobs.train` picks it for one worker when no cluster
is running (`RAY_ADDRESS`, a local `ray start --head`, or an address given); anything else goes
to Ray Train (training/ray_train.py).

Decoding runs in a thread `DECODE_AHEAD` batches ahead of the step. A split whose decoded arrays
fit in `DECODE_ONCE_BYTES` is decoded once and reshuffled every epoch; a larger one streams shard
by shard (shards in a new order each epoch, rows shuffled within a shard).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem
import torch

from pipeline.core.stage import ConfigError
from pipeline.models import factory as M
from training.batching import epoch_batches, families
from training.config import TrainConfig
from training.data import BatchDecoder
from training.loop import cosine_with_warmup, make_optimizer, train_loop
from training.losses import build_loss
from training.ray_train import (
    CHECKPOINT_MODEL, CHECKPOINT_PREFIX, CHECKPOINT_STATE, DECODE_AHEAD, DECODE_ONCE_BYTES, CurveWriter, TrainResult,
    checkpoint_dir_name, decoded_bytes, print_progress, read_curve, restore_checkpoint, save_checkpoint, shard_rows,
    train_split, training_inputs,
)

KEEP_CHECKPOINTS = 2  # as the Ray path's CheckpointConfig(num_to_keep=2)


def _epochs(files: list[str], columns: list[str], model: str, batch_size: int, seed: int, in_memory: bool,
            batching: str = "random") -> Iterator[dict[str, np.ndarray]]:
    """Decoded batches of `batch_size` rows (the last partial batch of an epoch dropped), epoch
    after epoch, grouped as `batching` says (training/batching.py; a streamed split groups
    families within each shard)."""
    decoder = BatchDecoder(model)
    decoded = groups = None
    if in_memory:
        parts = [decoder(t.to_pydict()) for t in (train_split(u, columns) for u in files) if t.num_rows]
        decoded = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
        if decoded and batching == "families":
            groups = families(decoded)
    epoch = 0
    while True:
        rng = np.random.default_rng(seed + epoch)
        produced = 0
        sources = [decoded] if decoded is not None else (decoder(train_split(files[i], columns).to_pydict()) for i in rng.permutation(len(files)))
        for arrays in sources:
            if not arrays:
                continue
            for pick in epoch_batches(arrays, batch_size, rng, batching, groups if arrays is decoded else None):
                produced += 1
                yield {k: v[pick] for k, v in arrays.items()}
        if produced == 0:
            raise ConfigError(f"the training split has fewer than batch_size={batch_size} rows in one {'dataset' if in_memory else 'shard'}")
        epoch += 1


def _prefetched(batches: Iterator[dict[str, np.ndarray]], ahead: int) -> Iterator[dict[str, torch.Tensor]]:
    """`batches`, produced by a daemon thread up to `ahead` batches before they are asked for; an
    error in the thread is raised here."""
    ready: queue.Queue = queue.Queue(maxsize=ahead)
    done = object()

    def produce() -> None:
        try:
            for batch in batches:
                ready.put(batch)
        except BaseException as exc:  # handed to the consumer, which raises it
            ready.put(exc)
        ready.put(done)

    threading.Thread(target=produce, daemon=True, name="foil-decode").start()
    while True:
        item = ready.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in item.items()}


def complete_checkpoints(fs: Any, run_dir: str) -> list[str]:
    """The run's `checkpoint_step_*` folders holding both checkpoint files, oldest first."""
    found = sorted(p for p in fs.glob(f"{run_dir}/{CHECKPOINT_PREFIX}*") if fs.isdir(p))
    return [p for p in found if fs.exists(f"{p}/{CHECKPOINT_MODEL}") and fs.exists(f"{p}/{CHECKPOINT_STATE}")]


def latest_checkpoint(fs: Any, run_dir: str) -> str | None:
    found = complete_checkpoints(fs, run_dir)
    return found[-1] if found else None


def _write_checkpoint(fs: Any, run_dir: str, step: int, model: torch.nn.Module, optimizer: Any, scheduler: Any, name: str) -> str:
    """Both files into a temporary folder first, then into place (a rename on a local disk, so a
    killed run leaves either the whole checkpoint or none); complete ones before the last two go."""
    final = f"{run_dir}/{checkpoint_dir_name(step)}"
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp), model, optimizer, scheduler, step, name)
        if fs.exists(final):
            fs.rm(final, recursive=True)
        if isinstance(fs, LocalFileSystem):
            staged = f"{run_dir}/_tmp-{checkpoint_dir_name(step)}"
            shutil.rmtree(staged, ignore_errors=True)
            shutil.copytree(tmp, staged)
            os.replace(staged, final)
        else:
            fs.put(f"{tmp}/", final, recursive=True)
    for old in complete_checkpoints(fs, run_dir)[:-KEEP_CHECKPOINTS]:
        fs.rm(old, recursive=True)
    return final


def fit_local(dataset_root: str, cfg: TrainConfig, out_dir: str, use_gpu: bool = False, run_name: str = "foil-train") -> TrainResult:
    """Train on the `train` split of the dataset's committed `train` shards, in this process;
    checkpoints and the curve under `out_dir/run_name` (a folder or an fsspec URI)."""
    files, columns, with_images = training_inputs(dataset_root, cfg)
    device = torch.device("cuda") if use_gpu else torch.device("cpu")
    storage = out_dir if "://" in out_dir else str(Path(out_dir).resolve())
    fs, run_dir = fsspec.core.url_to_fs(f"{storage.rstrip('/')}/{run_name}")
    fs.makedirs(run_dir, exist_ok=True)
    curve_path = f"{storage.rstrip('/')}/{run_name}/curve.jsonl"

    torch.manual_seed(cfg.seed)  # as rank 0 of the Ray path
    model = M.create_model(cfg.model, pretrained=cfg.pretrained, device=device)
    loop_cfg = TrainConfig(**{**asdict(cfg), "use_negative_images": with_images}).loop_config(use_gpu)
    optimizer = make_optimizer(model, loop_cfg)
    scheduler = cosine_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    start_step = 0
    resume = latest_checkpoint(fs, run_dir)
    if resume:
        start_step = restore_checkpoint(lambda name: fs.open(f"{resume}/{name}", "rb"), model, optimizer, scheduler, device)

    in_memory = decoded_bytes(shard_rows(files), cfg.model) <= DECODE_ONCE_BYTES
    batches = _prefetched(_epochs(files, columns, cfg.model, cfg.batch_size, cfg.seed, in_memory, cfg.batching), DECODE_AHEAD)
    curve = CurveWriter(curve_path)
    curve.append({"event": "start", "step": start_step, "world_size": 1, "nodes": ["local"]})
    print(f"[foil train] {'resuming at' if start_step else 'starting at'} step {start_step} of {cfg.steps} (in this process)", flush=True)
    last = {"dir": resume}

    def on_step(step: int, metrics: dict[str, float]) -> None:
        curve.append({**metrics, "step": step})
        print_progress(step, cfg.steps, metrics, "samples/s")

    def on_checkpoint(step: int, metrics: dict[str, float]) -> None:
        last["dir"] = _write_checkpoint(fs, run_dir, step, model, optimizer, scheduler, cfg.model)

    start = time.perf_counter()
    if start_step < cfg.steps:
        train_loop(model, batches, build_loss(cfg.loss), optimizer, scheduler, loop_cfg, start_step, device, on_step, on_checkpoint)
    if last["dir"] is None:
        raise RuntimeError("training finished without a checkpoint")
    ckpt_dir = last["dir"] if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(last["dir"])
    return TrainResult(
        run_name=run_name,
        checkpoint_dir=ckpt_dir,
        model_weights=f"{ckpt_dir}/{CHECKPOINT_MODEL}",
        steps=int(ckpt_dir.rsplit(CHECKPOINT_PREFIX, 1)[1]),
        seconds=time.perf_counter() - start,
        history=read_curve(curve_path),
        config=json.loads(json.dumps(asdict(cfg))),
    )
