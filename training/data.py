"""Turning training shards into tensors: decode images, tokenize captions and negatives.

`BatchDecoder` is a plain callable over a dict of numpy columns (the `train` table's columns),
so it runs the same inside Ray Data's `map_batches` (one instance per worker, built once) and in
a plain loop in tests. Images are composited on white (emoji have alpha), resized to the model's
input size and kept as uint8 until the model's device normalises them.

A row's negative image (`negative_image`, null for most rows) decodes to the same shape; rows
without one get a black image and `has_negative_image` false, so every batch has the same shapes
on every worker (features are gathered across workers) and the loss masks those rows out.
Tables without the column (older exports, evaluation reads) decode as if every row had none.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core import schema as S
from pipeline.models.images import decode_image
from pipeline.models import factory as M


class BatchDecoder:
    def __init__(self, model_name: str):
        self.size = M.image_size(model_name)
        self.tokenize = M.tokenizer(model_name)

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        captions = [str(c) for c in batch[S.CAPTION]]
        negatives = [n if isinstance(n, str) and n else "" for n in batch[S.NEG_CAPTION]]
        blobs = batch[S.NEG_IMAGE_COL] if S.NEG_IMAGE_COL in batch else [None] * len(captions)
        has_image = np.array([isinstance(b, (bytes, bytearray)) and len(b) > 0 for b in blobs], dtype=bool)  # [B]
        blank = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        return {
            "image": np.stack([decode_image(b, self.size) for b in batch[S.IMAGE]]),  # [B, H, W, 3] uint8
            "text": self.tokenize(captions).numpy(),  # [B, ctx] int64
            "negative_text": self.tokenize(negatives).numpy(),  # [B, ctx] int64
            "has_negative": np.array([bool(n) for n in negatives]),  # [B]
            "negative_image": np.stack([decode_image(b, self.size) if ok else blank for b, ok in zip(blobs, has_image)]),  # [B, H, W, 3]
            "has_negative_image": has_image,  # [B]
        }
