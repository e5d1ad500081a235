"""The training loop: one function, read top to bottom.

It knows nothing about Ray. The caller hands it a model, an iterator of decoded batches, a loss
and where to report and checkpoint, so the same loop runs in a unit test, on a laptop and inside
Ray Train. Logging (`log_every`) and checkpointing (`checkpoint_every`) are independent schedules;
both also fire on the last step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from pipeline.models.factory import normalize, trim_text_for


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 10
    grad_accum: int = 1
    use_negatives: bool = True
    # Encode the batches' negative images too (TripletCLIP's pairs, see training/losses.py).
    # The caller turns it on only when the data has some: it costs a second image batch per step.
    use_negative_images: bool = False
    bf16: bool = False  # autocast to bfloat16 (GPU)
    # Batch-norm layers stay in evaluation mode (their running statistics fixed, their scales and
    # shifts still trained): for towers that start from real weights, whose statistics a small
    # batch of one domain would otherwise overwrite. TrainConfig turns it on for those.
    freeze_bn_stats: bool = False
    log_every: int = 10
    checkpoint_every: int | None = None  # None: `on_checkpoint` only at the last step


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model: nn.Module, cfg: LoopConfig) -> torch.optim.AdamW:
    # No weight decay on gains, biases, embeddings and the temperature, as in CLIP.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name or "embedding" in name else decay).append(p)
    # One fused kernel per parameter group instead of a pass per AdamW term. On CPU, foil-tiny-vit's
    # whole optimizer step (mostly its 49,408 x 128 token embedding) took 29.5 ms, fused 5.8 ms.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in decay + no_decay)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, fused=fused
    )


def train_loop(
    model: nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: LoopConfig,
    start_step: int = 0,
    device: torch.device = torch.device("cpu"),
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_checkpoint: Callable[[int, dict[str, float]], None] | None = None,
) -> int:
    """Train from `start_step` until `cfg.steps` optimizer steps. Returns the last step done.

    `on_step(step, metrics)` is called every `cfg.log_every` steps, `on_checkpoint(step, metrics)`
    every `cfg.checkpoint_every` steps; both at the last step too."""
    model.train()
    if cfg.freeze_bn_stats:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    step = start_step
    micro = 0
    seen = 0
    tick = time.perf_counter()
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    while step < cfg.steps:
        try:
            batch = next(batches)
        except StopIteration:
            break
        images = normalize(batch["image"].to(device, non_blocking=True))  # [B, 3, H, W]
        texts = trim_text_for(model, batch["text"]).to(device)  # [B, n <= ctx]: see ShortTextCLIP
        b = images.shape[0]
        with_images = cfg.use_negatives and cfg.use_negative_images
        if with_images:
            # one forward over [I; I_neg], so the negative images go through DDP's forward too
            images = torch.cat([images, normalize(batch["negative_image"].to(device, non_blocking=True))])  # [2B, 3, H, W]
        with autocast:
            out = model(image=images, text=texts)  # image_features, text_features, logit_scale
            if with_images:
                out["image_features"], out["negative_image_features"] = out["image_features"][:b], out["image_features"][b:]  # [B, D] each
                out["has_negative_image"] = batch["has_negative_image"].to(device)
            if cfg.use_negatives:
                out["negative_text_features"] = model.encode_text(trim_text_for(model, batch["negative_text"]).to(device), normalize=True)
                out["has_negative"] = batch["has_negative"].to(device)
            losses = loss_fn(**out)
        (losses["loss"] / cfg.grad_accum).backward()
        micro += 1
        seen += b
        if micro % cfg.grad_accum:
            continue
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        with torch.no_grad():  # CLIP clamps the learned temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        last = step == cfg.steps
        log = on_step is not None and (step % cfg.log_every == 0 or last)
        save = on_checkpoint is not None and (last or (cfg.checkpoint_every is not None and step % cfg.checkpoint_every == 0))
        if not (log or save):
            continue
        elapsed = time.perf_counter() - tick
        metrics = {
            "loss": float(losses["loss"].detach()),
            "loss_image": float(losses["loss_image"]),
            "loss_text": float(losses["loss_text"]),
            "lr": scheduler.get_last_lr()[0],
            "logit_scale": float(model.logit_scale.detach().exp()),
            "samples_per_second": seen / elapsed if elapsed > 0 else 0.0,
        }
        if log:
            on_step(step, metrics)
        if save:
            on_checkpoint(step, metrics)
        seen, tick = 0, time.perf_counter()  # the next rate leaves out the time spent saving
    return step
