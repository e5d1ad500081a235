"""Evaluation on files users bring: SugarCrepe, image pairs (Winoground-style), zero-shot sets.

Formats (image paths are relative to `image_root`):

- SugarCrepe: a JSON object `{id: {"filename", "caption", "negative_caption"}}` (SugarCrepe's own
  files), or a list of such objects. Score: share of images closer to the caption than to the
  negative. One file is one kind (`replace_att.json` -> `replace_att`).
- Pairs: scored by training/pairs.py, which reads both pairs formats (JSON lines
  `{image_a, image_b, caption_a, caption_b, kind}`, or a JSON list of
  `{image_0, image_1, caption_0, caption_1}`): Winoground's text, image and group scores.
- Zero-shot: JSON list of `{"image", "label"}`; class names are the distinct labels, prompts
  are `templates` with `{}` replaced by the class name, averaged per class as in CLIP.

A malformed file is reported with the file, the item and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.benchmark_files import load_items, require_field
from pipeline.core.stage import ConfigError
from pipeline.models import factory as M
from pipeline.models.images import decode_image

DEFAULT_TEMPLATES = ("a photo of a {}.", "an emoji of a {}.", "a drawing of a {}.")


class _Encoder:
    def __init__(self, model: torch.nn.Module, model_name: str, image_root: Path):
        self.model = model.eval()
        self.size = M.image_size(model_name)
        self.tokenize = M.tokenizer(model_name)
        self.image_root = Path(image_root)

    def images(self, names: list[str], where: Path) -> np.ndarray:
        arrays = []
        for name in names:
            file = self.image_root / name
            try:
                arrays.append(decode_image(file.read_bytes(), self.size))
            except FileNotFoundError:
                raise ConfigError(f"{where}: image {file} not found") from None
        return M.encode_images(self.model, arrays)

    def texts(self, texts: list[str]) -> np.ndarray:
        return M.encode_texts(self.model, self.tokenize, texts)


def sugarcrepe(model: torch.nn.Module, model_name: str, path: Path, image_root: Path) -> dict[str, float]:
    items = load_items(path)
    fields = [(require_field(path, i, it, "filename"), require_field(path, i, it, "caption"), require_field(path, i, it, "negative_caption")) for i, it in items]
    enc = _Encoder(model, model_name, image_root)
    img = enc.images([f for f, _, _ in fields], path)
    pos = np.sum(img * enc.texts([c for _, c, _ in fields]), axis=1)
    neg = np.sum(img * enc.texts([n for _, _, n in fields]), axis=1)
    kind = Path(path).stem
    return {f"sugarcrepe:{kind}": float(np.mean(pos > neg)), f"sugarcrepe:{kind}:items": float(len(fields))}


def zero_shot(model: torch.nn.Module, model_name: str, path: Path, image_root: Path, templates: tuple[str, ...] = DEFAULT_TEMPLATES) -> dict[str, float]:
    items = load_items(path)
    rows = [(require_field(path, i, it, "image"), require_field(path, i, it, "label")) for i, it in items]
    if any("{}" not in t for t in templates):
        raise ConfigError("--templates: every template needs a {} for the class name")
    classes = sorted({label for _, label in rows})
    enc = _Encoder(model, model_name, image_root)
    weights = np.stack([enc.texts([t.format(c) for t in templates]).mean(axis=0) for c in classes])  # [C, D]
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    logits = enc.images([img for img, _ in rows], path) @ weights.T  # [N, C]
    truth = np.array([classes.index(label) for _, label in rows])
    top5 = np.argsort(-logits, axis=1)[:, :5]
    stem = Path(path).stem
    return {
        f"zeroshot:{stem}:top1": float(np.mean(top5[:, 0] == truth)),
        f"zeroshot:{stem}:top5": float(np.mean((top5 == truth[:, None]).any(axis=1))),
        f"zeroshot:{stem}:classes": float(len(classes)),
        f"zeroshot:{stem}:items": float(len(rows)),
    }
