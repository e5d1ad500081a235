"""Turning training shards into tensors: decode images, tokenize captions and negatives.

`BatchDecoder` is a plain callable over a dict of numpy columns (the `train` table's columns),
so it runs the same inside Ray Data's `map_batches` (one instance per worker, built once) and in
a plain loop in tests. Images are composited on white (emoji have alpha), resized to the model's
input size and kept as uint8 until the model's device normalises them.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from pipeline import schema as S
from pipeline.score import on_white
from training import model as M


def decode_image(blob: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(blob)) as img:
        rgb = on_white(img)
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(rgb, dtype=np.uint8)  # [H, W, 3]


class BatchDecoder:
    def __init__(self, model_name: str):
        self.size = M.image_size(model_name)
        self.tokenize = M.tokenizer(model_name)

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        captions = [str(c) for c in batch[S.CAPTION]]
        negatives = [n if isinstance(n, str) and n else "" for n in batch[S.NEG_CAPTION]]
        return {
            "image": np.stack([decode_image(b, self.size) for b in batch[S.IMAGE]]),  # [B, H, W, 3] uint8
            "text": self.tokenize(captions).numpy(),  # [B, ctx] int64
            "negative_text": self.tokenize(negatives).numpy(),  # [B, ctx] int64
            "has_negative": np.array([bool(n) for n in negatives]),  # [B]
        }
