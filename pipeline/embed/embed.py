"""Embedding stage: image and text embeddings and the CLIP score (their cosine) for every image.

The model is any architecture of the model factory (training/model.py): an open_clip name or
foil config, with weights from a local file (`pretrained`), never downloaded. It is built on the
worker, lazily, once: the stage declares `reuse_instance`, so the Ray runner keeps one instance
per actor of a pool and the local runner one for all shards. Vectors are L2-normalised float16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline.core import schema as S
from pipeline.core.stage import ALL_CORES, ConfigError, Stage, register


def embedding_matrix(column: pa.ChunkedArray | pa.Array, normalise: bool = True) -> np.ndarray:
    """An embeddings column as a float32 [N, D] matrix. `normalise` re-normalises the rows, which
    float16 storage leaves a little off unit length (cosines then compare exactly)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    vectors = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(array), -1)
    if normalise:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
    return vectors


@register
class EmbedStage(Stage):
    name = "embed"
    input_columns = [S.SAMPLE_ID, S.CAPTION, S.STATUS, S.IMAGE]
    batch_rows = 256
    reuse_instance = True
    process_cores = ALL_CORES  # the model's forward runs on torch's intra-op threads

    def __init__(self, model: str = "foil-tiny-vit", pretrained: str | None = None, batch_size: int = 64):
        super().__init__()
        from pipeline.models import factory as M# torch and open_clip load only where a stage is built

        try:
            cfg = M.model_config(model)
        except KeyError as exc:
            raise ConfigError(f"embed.model: {exc.args[0]}") from None
        if pretrained is not None and not Path(pretrained).is_file():
            raise ConfigError(f"embed.pretrained: {pretrained} is not a file (weights are never downloaded)")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ConfigError(f"embed.batch_size: must be a positive integer, got {batch_size!r}")
        self.model_name = model
        self.pretrained = pretrained
        self.batch_size = batch_size
        self.output_schema = S.embeddings_schema(cfg["embed_dim"])
        self._model = None
        self._decode = None

    def config(self) -> dict[str, Any]:
        return {"model": self.model_name, "pretrained": self.pretrained, "batch_size": self.batch_size}

    def _load(self) -> None:
        from pipeline.models import factory as M
        from pipeline.models.images import decode_image

        self._model, self._tokenize, self._size = M.load_encoder(self.model_name, self.pretrained)
        self._decode = decode_image
        self.count("model_loads")

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        from pipeline.models import factory as M

        if self._model is None:
            self._load()
        ids, captions, images = [], [], []
        for sid, caption, status, blob in zip(*(batch.column(c).to_pylist() for c in self.input_columns)):
            if status != S.STATUS_SUCCESS or blob is None:
                self.drop("not_crawled")
                continue
            try:
                images.append(self._decode(blob, self._size))
            except Exception:  # corrupt bytes: the score stage records the decode error itself
                self.drop("decode_error")
                continue
            ids.append(sid)
            captions.append(caption or "")
        if not ids:
            return
        img = M.encode_images(self._model, images, self.batch_size)  # [N, D]
        txt = M.encode_texts(self._model, self._tokenize, captions, self.batch_size)  # [N, D]
        dim = img.shape[1]
        yield pa.RecordBatch.from_pydict(
            {
                S.SAMPLE_ID: ids,
                S.IMAGE_EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(img.astype(np.float16).ravel()), dim),
                S.TEXT_EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(txt.astype(np.float16).ravel()), dim),
                S.CLIP_SCORE: pa.array(np.sum(img * txt, axis=1), pa.float32()),  # cosine, in float32
                S.MODEL: [self.model_name] * len(ids),
            },
            schema=self.output_schema,
        )
