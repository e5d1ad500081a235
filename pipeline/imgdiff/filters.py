"""Scorers for Img-Diff pairs and the pair filter on whole-image similarity.

A pair is worth keeping when its two images are alike but not the same: the released code keeps
0.9 < cosine < 0.98 of the two images' CLIP embeddings. foil scores with the dataset's embed
model (`EmbedModelScorer`: any model of the factory, weights from a local file) or, with none
configured, with `PixelScorer`, the correlation of the two images' small thumbnails, which needs
no weights. Both also score box crops for the Difference Area Generator. The score is written
for every pair; the decision (`pair_filter_reason`) is taken from it, so thresholds can be
re-tuned in SQL without recomputing anything.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.core.stage import ConfigError
from pipeline.imgdiff.areas import Box, crop

# Why a pair was dropped (column `filter_reason`).
TOO_SIMILAR = "too_similar"  # cosine at or above the upper bound: nothing (visible) changed
TOO_DIFFERENT = "too_different"  # at or below the lower bound: not one scene with one object changed
NO_DIFFERENCE_AREA = "no_difference_area"  # in the band, but no box survived the generator
UNREADABLE_IMAGE = "unreadable_image"
SIZE_MISMATCH = "size_mismatch"


def pair_filter_reason(similarity: float, lower: float, upper: float) -> str | None:
    """Keep lower < similarity < upper; otherwise name the bound it failed."""
    if similarity >= upper:
        return TOO_SIMILAR
    if similarity <= lower:
        return TOO_DIFFERENT
    return None


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12)


class PixelScorer:
    """No weights: an image is its `size` x `size` RGB thumbnail, mean-removed (so a shared
    flat background does not make every pair alike), and two images' similarity is the cosine
    of those vectors (their correlation). A flat image, which has no pattern, maps to one fixed
    vector, so two flat images are alike. A crop pair's similarity is the share of the box's
    pixels that did not change."""

    name = "pixel"

    def __init__(self, size: int = 32):
        self.size = size

    def config(self) -> dict:
        return {"scorer": self.name, "size": self.size}

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        out = np.empty((len(images), self.size * self.size * 3), np.float32)
        for i, image in enumerate(images):
            thumb = np.asarray(Image.fromarray(image).resize((self.size, self.size), Image.Resampling.BOX), np.float32).ravel()
            thumb -= thumb.mean()
            if np.linalg.norm(thumb) < 1e-3 * thumb.size:  # flat: no pattern to correlate
                thumb = np.zeros_like(thumb)
                thumb[0] = 1.0
            out[i] = thumb
        return _unit(out)

    def crop_similarities(self, a: np.ndarray, b: np.ndarray, boxes: list[Box], changed: np.ndarray) -> np.ndarray:
        return np.array([1.0 - float(crop(changed, box).mean()) for box in boxes], np.float32)

    def text_matches(self, crops: list[np.ndarray], texts: list[str]) -> np.ndarray:
        raise ConfigError("imgdiff.text_threshold: matching crops to words needs an embed model (imgdiff.model); the pixel scorer has no text side")


class EmbedModelScorer:
    """The embed model (pipeline/models/factory.py) as scorer: cosine of image embeddings for
    pairs and for crop pairs (each crop resized to the model's input), cosine of a crop and its
    words for the text match. The model is built on first use, once per instance."""

    name = "model"

    def __init__(self, model: str, pretrained: str | None = None, batch_size: int = 64):
        self.model_name = model
        self.pretrained = pretrained
        self.batch_size = batch_size
        self._model = None

    def config(self) -> dict:
        return {"scorer": self.name, "model": self.model_name, "pretrained": self.pretrained}

    def _load(self) -> None:
        from pipeline.models import factory as M

        self._model, self._tokenize, self._size = M.load_encoder(self.model_name, self.pretrained)

    def _resize(self, image: np.ndarray) -> np.ndarray:
        if image.shape[0] == self._size and image.shape[1] == self._size:
            return image
        return np.asarray(Image.fromarray(image).resize((self._size, self._size), Image.Resampling.BICUBIC), np.uint8)

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        from pipeline.models import factory as M

        if self._model is None:
            self._load()
        return M.encode_images(self._model, [self._resize(i) for i in images], self.batch_size)

    def crop_similarities(self, a: np.ndarray, b: np.ndarray, boxes: list[Box], changed: np.ndarray) -> np.ndarray:
        features = self.embed_images([crop(a, box) for box in boxes] + [crop(b, box) for box in boxes])
        return np.sum(features[: len(boxes)] * features[len(boxes) :], axis=1)

    def text_matches(self, crops: list[np.ndarray], texts: list[str]) -> np.ndarray:
        from pipeline.models import factory as M

        images = self.embed_images(crops)
        words = M.encode_texts(self._model, self._tokenize, [f"a photo of {t}" for t in texts], self.batch_size)
        return np.sum(images * words, axis=1)


def pair_similarities(scorer: PixelScorer | EmbedModelScorer, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Whole-image cosine of each pair, in one batched pass of the scorer."""
    if not pairs:
        return np.zeros(0, np.float32)
    features = scorer.embed_images([a for a, _ in pairs] + [b for _, b in pairs])
    return np.sum(features[: len(pairs)] * features[len(pairs) :], axis=1).astype(np.float32)


def make_scorer(model: str | None, pretrained: str | None = None, batch_size: int = 64) -> PixelScorer | EmbedModelScorer:
    """The embed model when one is named (`imgdiff.model`, by default the recipe's `embed.model`),
    else the pixel scorer."""
    return PixelScorer() if model is None else EmbedModelScorer(model, pretrained, batch_size)
