"""Minimal-pair evaluation (Winoground-style) and concept retrieval, from files.

A pairs file is JSON lines, one pair a line:
`{"image_a": "images/x.png", "image_b": "images/y.png", "caption_a": "...", "caption_b": "...", "kind": "skin_tone"}`,
caption_a describing image_a; image paths are relative to the file's folder unless an image root
is given. (A JSON list of `{image_0, image_1, caption_0, caption_1}`, the older pairs format, is
read too, its file name as the kind.) `foil heldout-pairs` writes one from Twemoji, and
`foil imgdiff export-pairs` writes one from a dataset's Img-Diff pairs.

For each pair there are four single comparisons: image a prefers caption a to caption b, image b
prefers caption b, caption a prefers image a to image b, caption b prefers image b. Winoground's
text score needs both image-side comparisons, its image score both caption-side ones, its group
score all four; `pair_accuracy` is the mean of the four, whose chance level is 50% (the text,
image and group scores have chance 25%, 25% and 16.7%). Each is given per kind and over all pairs.

A concepts file (JSON lines `{"image", "caption"}`, one image per concept) gives retrieval R@1 and
R@5 in both directions over all its concepts.

The scoring works on any embedder (`images(paths)`, `texts(captions)` returning L2-normalised
rows), so a test can plug in embeddings whose answer is known.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from pipeline.core.stage import ConfigError
from pipeline.models import factory as M
from pipeline.models.images import decode_image
from training.evaluate import recall_at_k

PAIR_FIELDS = ("image_a", "image_b", "caption_a", "caption_b")
LEGACY_PAIR_FIELDS = ("image_0", "image_1", "caption_0", "caption_1")  # the JSON-list format
CONCEPT_FIELDS = ("image", "caption")
ALL_KINDS = "all"
PAIR_METRICS = ("text_score", "image_score", "group_score", "pair_accuracy")


@dataclass(frozen=True)
class PairItem:
    image_a: Path
    image_b: Path
    caption_a: str
    caption_b: str
    kind: str


class Embedder(Protocol):
    def images(self, paths: list[Path]) -> np.ndarray: ...  # [N, D], rows L2-normalised

    def texts(self, captions: list[str]) -> np.ndarray: ...  # [N, D], rows L2-normalised


def _field(path: Path, where: str, item: object, name: str) -> str:
    if not isinstance(item, dict) or not isinstance(item.get(name), str) or not item[name].strip():
        raise ConfigError(f"{path}: {where}: missing or empty field {name!r}")
    return item[name]


def _json_lines(path: Path) -> list[tuple[str, object]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if text.lstrip().startswith("["):  # the older format: one JSON list
        try:
            return [(f"item {i}", item) for i, item in enumerate(json.loads(text))]
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
    if not items:
        raise ConfigError(f"{path}: no items")
    return items


def _image(path: Path, where: str, root: Path, name: str) -> Path:
    file = root / name
    if not file.is_file():
        raise ConfigError(f"{path}: {where}: image {file} not found")
    return file


def read_pairs(path: Path, image_root: Path | None = None) -> list[PairItem]:
    """Every pair of the file, checked: fields present, images exist. Errors name file, line, field."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    pairs = []
    for where, item in _json_lines(path):
        legacy = isinstance(item, dict) and "image_0" in item
        names = LEGACY_PAIR_FIELDS if legacy else PAIR_FIELDS
        image_a, image_b, caption_a, caption_b = (_field(path, where, item, n) for n in names)
        kind = item.get("kind") if isinstance(item.get("kind"), str) and item.get("kind") else path.stem
        pairs.append(PairItem(_image(path, where, root, image_a), _image(path, where, root, image_b), caption_a, caption_b, kind))
    return pairs


def read_concepts(path: Path, image_root: Path | None = None) -> list[tuple[Path, str]]:
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    concepts = []
    for where, item in _json_lines(path):
        image, caption = (_field(path, where, item, n) for n in CONCEPT_FIELDS)
        concepts.append((_image(path, where, root, image), caption))
    return concepts


def pair_comparisons(image_a: np.ndarray, image_b: np.ndarray, text_a: np.ndarray, text_b: np.ndarray) -> np.ndarray:
    """The four single comparisons of each pair, [N, 4] bool: image a picks caption a, image b
    picks caption b, caption a picks image a, caption b picks image b. A tie is a failure."""
    s = lambda x, y: np.sum(x * y, axis=1)  # noqa: E731  (row-wise cosine of normalised rows)
    aa, bb, ab, ba = s(image_a, text_a), s(image_b, text_b), s(image_a, text_b), s(image_b, text_a)
    return np.stack([aa > ab, bb > ba, aa > ba, bb > ab], axis=1)


def pair_scores(comparisons: np.ndarray) -> dict[str, float]:
    """[N, 4] comparisons -> text, image and group scores and the mean of the four."""
    text = comparisons[:, 0] & comparisons[:, 1]
    image = comparisons[:, 2] & comparisons[:, 3]
    return {
        "text_score": float(text.mean()),
        "image_score": float(image.mean()),
        "group_score": float((text & image).mean()),
        "pair_accuracy": float(comparisons.mean()),
        "pairs": float(len(comparisons)),
    }


def _embed_unique_images(embedder: Embedder, paths: list[Path]) -> dict[Path, np.ndarray]:
    unique = sorted(set(paths))
    return dict(zip(unique, embedder.images(unique)))


def score_pairs(embedder: Embedder, pairs: list[PairItem]) -> dict[str, dict[str, float]]:
    """{kind or "all": {metric: value}} over the pairs."""
    if not pairs:
        raise ConfigError("no pairs to score")
    images = _embed_unique_images(embedder, [p.image_a for p in pairs] + [p.image_b for p in pairs])
    captions = sorted({p.caption_a for p in pairs} | {p.caption_b for p in pairs})
    texts = dict(zip(captions, embedder.texts(captions)))
    comparisons = pair_comparisons(
        np.stack([images[p.image_a] for p in pairs]), np.stack([images[p.image_b] for p in pairs]),
        np.stack([texts[p.caption_a] for p in pairs]), np.stack([texts[p.caption_b] for p in pairs]),
    )
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        by_kind[p.kind].append(i)
    scores = {kind: pair_scores(comparisons[rows]) for kind, rows in sorted(by_kind.items())}
    scores[ALL_KINDS] = pair_scores(comparisons)
    return scores


def score_retrieval(embedder: Embedder, concepts: list[tuple[Path, str]]) -> dict[str, float]:
    """R@1 and R@5, image->text and text->image, over all concepts (equal captions count as correct)."""
    if not concepts:
        raise ConfigError("no concepts to retrieve")
    images = embedder.images([image for image, _ in concepts])  # [N, D]
    captions = np.array([caption for _, caption in concepts], dtype=object)
    texts = embedder.texts(list(captions))  # [N, D]
    sim = images @ texts.T  # [N images, N captions]
    correct = captions[:, None] == captions[None, :]
    metrics = {"concepts": float(len(concepts))}
    for k in (1, 5):
        metrics[f"image_to_text_R@{k}"] = recall_at_k(sim, correct, k)
        metrics[f"text_to_image_R@{k}"] = recall_at_k(sim.T, correct.T, k)
    return metrics


def flat_pair_metrics(stem: str, scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """`pairs:<file>:<metric>` over all pairs and `pairs:<file>:<kind>:<metric>` per kind."""
    flat = {}
    for kind, values in scores.items():
        prefix = f"pairs:{stem}" if kind == ALL_KINDS else f"pairs:{stem}:{kind}"
        flat.update({f"{prefix}:{name}": value for name, value in values.items()})
    return flat


class ModelEmbedder:
    """Embeds with an open_clip model at `image_size` (default: the architecture's), images on
    white. `decoded` (path -> uint8 image at that size), owned by the caller, lets several models
    of one experiment decode each image once."""

    def __init__(self, model: torch.nn.Module, model_name: str, image_size: int | None = None, decoded: dict[tuple[Path, int], np.ndarray] | None = None):
        self.model = model.eval()
        self.size = image_size or M.image_size(model_name)
        self.tokenize = M.tokenizer(model_name)
        self.decoded = decoded if decoded is not None else {}

    def _decode(self, path: Path) -> np.ndarray:
        key = (Path(path), self.size)
        if key not in self.decoded:
            self.decoded[key] = decode_image(Path(path).read_bytes(), self.size)
        return self.decoded[key]

    def images(self, paths: list[Path]) -> np.ndarray:
        return M.encode_images(self.model, [self._decode(p) for p in paths])

    def texts(self, captions: list[str]) -> np.ndarray:
        return M.encode_texts(self.model, self.tokenize, list(captions))


def evaluate_files(embedder: Embedder, pair_files: list[str], concept_files: list[str], image_root: str | None = None) -> dict[str, float]:
    """Flat metrics for every pairs file and concepts file (retrieval as `retrieval:<file>:<metric>`)."""
    metrics: dict[str, float] = {}
    root = Path(image_root) if image_root else None
    for path in pair_files:
        metrics.update(flat_pair_metrics(Path(path).stem, score_pairs(embedder, read_pairs(Path(path), root))))
    for path in concept_files:
        values = score_retrieval(embedder, read_concepts(Path(path), root))
        metrics.update({f"retrieval:{Path(path).stem}:{name}": value for name, value in values.items()})
    return metrics
