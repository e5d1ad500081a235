"""Train only the projection heads of a two-tower model whose towers start from real weights.

This is the data-filtering-network recipe at laptop scale: both towers stay frozen (EfficientNet-
Lite0 from ImageNet and MiniLM for `foil-effnet-lite0-minilm`), so their outputs are computed
once, and the two linear heads that map them into a shared space are trained with the CLIP loss
on the cached features. That takes seconds rather than hours, and the result is an ordinary
open_clip checkpoint: `embed: {model: foil-effnet-lite0-minilm, pretrained: heads.pt}` scores a
dataset with it, and `foil eval` measures it.

Works for models whose image tower ends in a `visual.head` module and whose text tower ends in a
`text.proj` module (open_clip's timm and Hugging Face towers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from pipeline.core import schema as S
from pipeline.core.stage import ConfigError
from pipeline.models import factory as M
from training.data import BatchDecoder
from training.losses import ContrastiveLoss


@dataclass(frozen=True)
class HeadsConfig:
    model: str = M.REAL_TWO_TOWER
    steps: int = 300
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    seed: int = 0


def _heads(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    visual, text = getattr(model.visual, "head", None), getattr(model.text, "proj", None) if hasattr(model, "text") else None
    if not isinstance(visual, nn.Module) or not isinstance(text, nn.Module):
        raise ConfigError("train-heads: the model needs an image tower with a `head` module and a text tower with a `proj` module (timm + Hugging Face towers, such as foil-effnet-lite0-minilm)")
    return visual, text


@torch.no_grad()
def tower_features(model: nn.Module, model_name: str, rows: pa.Table, batch_size: int = 64, progress: Callable[[int, int], None] | None = None,
                   image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen tower outputs, before the heads: image [N, Dv], text [N, Dt], images decoded at
    `image_size` (the architecture's own by default)."""
    visual_head, text_proj = _heads(model)
    model.visual.head, model.text.proj = nn.Identity(), nn.Identity()
    try:
        model.eval()
        decode = BatchDecoder(model_name)
        if image_size is not None:
            decode.size = image_size
        images, texts = [], []
        for start in range(0, rows.num_rows, batch_size):
            chunk = rows.slice(start, batch_size).to_pydict()
            chunk.setdefault(S.NEG_CAPTION, [None] * len(chunk[S.CAPTION]))
            batch = decode(chunk)
            images.append(model.encode_image(M.normalize(torch.from_numpy(batch["image"]))).float())
            texts.append(model.encode_text(torch.from_numpy(batch["text"])).float())
            if progress:
                progress(min(start + batch_size, rows.num_rows), rows.num_rows)
    finally:
        model.visual.head, model.text.proj = visual_head, text_proj
    return torch.cat(images), torch.cat(texts)


def train_heads(rows: pa.Table, cfg: HeadsConfig, out: str | Path, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the heads on `rows` (image, caption) and save an open_clip checkpoint to `out`."""
    if rows.num_rows < 2:
        raise ConfigError(f"train-heads: need at least 2 training rows, got {rows.num_rows}")
    torch.manual_seed(cfg.seed)
    model = M.create_model(cfg.model)
    start = time.perf_counter()
    last = [0.0]

    def report(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 5 or done == total:
            last[0] = time.perf_counter()
            progress(f"tower features: {done}/{total} rows")

    image_feats, text_feats = tower_features(model, cfg.model, rows, progress=report)  # [N, Dv], [N, Dt]
    feature_seconds = time.perf_counter() - start
    losses = fit_heads(model, image_feats, text_feats, cfg, progress)
    M.save_open_clip_checkpoint(model.eval(), Path(out), cfg.steps, cfg.model)
    return {
        "checkpoint": str(out), "model": cfg.model, "rows": image_feats.shape[0], "steps": cfg.steps,
        "first_loss": round(losses[0], 4), "last_loss": round(float(np.mean(losses[-20:])), 4),
        "feature_seconds": round(feature_seconds, 1), "seconds": round(time.perf_counter() - start, 1),
    }


def fit_heads(model: nn.Module, image_feats: torch.Tensor, text_feats: torch.Tensor, cfg: HeadsConfig,
              progress: Callable[[str], None] = print) -> list[float]:
    """Train `model`'s two heads (and its logit scale) in place on cached tower features with the
    CLIP loss, `cfg.steps` batches of `cfg.batch_size` drawn with `cfg.seed`. Returns the losses."""
    visual_head, text_proj = _heads(model)
    params = list(visual_head.parameters()) + list(text_proj.parameters()) + [model.logit_scale]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = ContrastiveLoss()
    generator = torch.Generator().manual_seed(cfg.seed)
    n, batch = image_feats.shape[0], min(cfg.batch_size, image_feats.shape[0])
    visual_head.train()
    text_proj.train()
    losses = []
    for step in range(1, cfg.steps + 1):
        idx = torch.randperm(n, generator=generator)[:batch]
        image = nn.functional.normalize(visual_head(image_feats[idx]), dim=-1)  # [B, D]
        text = nn.functional.normalize(text_proj(text_feats[idx]), dim=-1)  # [B, D]
        loss = loss_fn(image, text, model.logit_scale.exp())["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))  # CLIP's cap on the temperature
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == cfg.steps:
            progress(f"step {step}/{cfg.steps}  loss {np.mean(losses[-50:]):.4f}")
    return losses
