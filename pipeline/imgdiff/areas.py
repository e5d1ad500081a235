"""The Difference Area Generator: the boxes where two near-identical images differ.

Candidate boxes come from proposers, looked up by name in `PROPOSERS`: `difference` takes the
connected components of the thresholded, denoised pixel difference of the two images (the
workhorse); `regions` segments each image on its own (what a segmentation model does in the
released code) and proposes every region of both images at the same place in the other, so most
of its boxes sit on unchanged objects and the crop filter must remove them. A proposer may also
be a local folder holding a transformers semantic-segmentation model (SegFormer, say, read
offline): `regions` with the model's segments instead of the background threshold. Other
proposers register under their own name; the recipe chooses (`imgdiff.proposers`).

Each candidate box is then kept only if its two crops differ (crop similarity below
`crop_threshold`, from the scorer: the embed model's cosine, or the share of unchanged pixels
without one), optionally only if a crop matches the replaced words, then sorted most different
first, de-duplicated by NMS and capped. Every rejected box is counted by reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
from scipy import ndimage

from pipeline.core.stage import ConfigError
from pipeline.imgdiff.local_models import load_local_model

Box = tuple[int, int, int, int]  # [x0, y0, x1, y1) in pixels

# Why a candidate box was not kept (counted as `box:<reason>`).
BOX_TOO_SMALL = "too_small"
BOX_CROPS_ALIKE = "crops_alike"
BOX_TEXT_MISMATCH = "text_mismatch"
BOX_OVERLAP = "overlap"
BOX_OVER_LIMIT = "over_limit"


def box_iou(a: Box | list[int], b: Box | list[int]) -> float:
    """Intersection over union of two [x0, y0, x1, y1) boxes."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def difference_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[H, W] float32 in 0..1: the largest per-channel absolute difference of two uint8 images."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2]).astype(np.float32) / 255.0  # faster than max(axis=2)


def changed_mask(a: np.ndarray, b: np.ndarray, threshold: float, open_px: int) -> np.ndarray:
    """Pixels that changed: the difference above `threshold`, without the specks that sampling
    noise or JPEG ringing leave (see `denoise`)."""
    return denoise(difference_map(a, b) > threshold, open_px)


def denoise(mask: np.ndarray, open_px: int) -> np.ndarray:
    """Drop the specks: connected pieces smaller than two (2 * open_px + 1)-pixel squares. Unlike
    a morphological opening this never shaves a real change's thin parts (a triangle's tips,
    an outline), which stay attached to their object."""
    if open_px <= 0 or not mask.any():
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= 2 * (2 * open_px + 1) ** 2
    keep[0] = False
    return keep[labels]


def _component_boxes(mask: np.ndarray) -> list[Box]:
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))  # 8-connected
    return [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels) if s is not None]


def merge_close(boxes: list[Box], gap: int) -> list[Box]:
    """Merge boxes that overlap or lie within `gap` pixels of each other, until none do: one
    object whose change is split into pieces (a square replacing a circle of its own colour
    changes only the corners) is one difference area."""
    boxes = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] - gap <= b[2] and b[0] - gap <= a[2] and a[1] - gap <= b[3] and b[1] - gap <= a[3]:
                    boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return boxes


class Proposer(Protocol):
    def propose(self, a: np.ndarray, b: np.ndarray, changed: np.ndarray) -> list[Box]: ...


class DifferenceProposer:
    """Connected components of the changed pixels, nearby pieces merged."""

    def __init__(self, merge_gap_fraction: float = 0.08):
        self.merge_gap_fraction = merge_gap_fraction

    def propose(self, a: np.ndarray, b: np.ndarray, changed: np.ndarray) -> list[Box]:
        gap = int(round(self.merge_gap_fraction * max(changed.shape)))
        return merge_close(_component_boxes(changed), gap)


class RegionProposer:
    """Each image segmented alone: connected regions that differ from the image's background
    (the median colour of its border) by more than `threshold`. Proposes the regions of both
    images; it never looks at the other image, so most of its boxes are on unchanged objects."""

    def __init__(self, threshold: float = 0.1):
        self.threshold = threshold

    def propose(self, a: np.ndarray, b: np.ndarray, changed: np.ndarray) -> list[Box]:
        boxes: list[Box] = []
        for image in (a, b):
            border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
            background = np.median(border, axis=0)
            foreground = np.abs(image.astype(np.float32) - background).max(axis=2) / 255.0 > self.threshold
            foreground = denoise(foreground, 1)
            boxes += [box for box in _component_boxes(foreground) if box not in boxes]
        return boxes


class SegmentationProposer:
    """Each image segmented alone by a local semantic-segmentation model: the connected pieces of
    every class but the image's background (the class most common on its border), in both images.
    The model is loaded on the first pair, on the GPU when there is one."""

    def __init__(self, folder: str, field: str = "imgdiff.proposers"):
        self.folder, self.field = str(folder), field
        self._model = None

    def segment(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Per image, its class map [H, W] at the image's own size."""
        import torch

        if self._model is None:
            self._model = load_local_model(self.folder, "AutoModelForSemanticSegmentation", self.field, "segmentation model")
        with torch.no_grad():
            logits = self._model.model(pixel_values=self._model.pixels(images)).logits
        return [
            torch.nn.functional.interpolate(logits[i : i + 1], size=image.shape[:2], mode="bilinear", align_corners=False)[0].argmax(0).cpu().numpy()
            for i, image in enumerate(images)
        ]

    def propose(self, a: np.ndarray, b: np.ndarray, changed: np.ndarray) -> list[Box]:
        boxes: list[Box] = []
        for labels in self.segment([a, b]):
            border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
            background = np.bincount(border).argmax()
            for value in np.unique(labels):
                if value != background:
                    boxes += [box for box in _component_boxes(labels == value) if box not in boxes]
        return boxes


PROPOSERS: dict[str, Callable[[], Proposer]] = {
    "difference": DifferenceProposer,
    "regions": RegionProposer,
}


def proposer(name: str, field: str = "imgdiff.proposers") -> Proposer:
    """A proposer by name, or a segmentation proposer for a local model folder (with config.json)."""
    if name in PROPOSERS:
        return PROPOSERS[name]()
    if (Path(name) / "config.json").is_file():
        return SegmentationProposer(name, field)
    raise ConfigError(f"{field}: unknown proposer {name!r}; known: {', '.join(sorted(PROPOSERS))}, or a local folder holding a segmentation model (config.json)")


class CropScorer(Protocol):
    """What the generator needs from a scorer (pipeline/imgdiff/filters.py)."""

    def crop_similarities(self, a: np.ndarray, b: np.ndarray, boxes: list[Box], changed: np.ndarray) -> np.ndarray: ...

    def text_matches(self, crops: list[np.ndarray], texts: list[str]) -> np.ndarray: ...


@dataclass
class DifferenceAreas:
    boxes: list[Box]  # most different first
    scores: list[float]  # per box: 1 - crop similarity
    rejected: Counter = field(default_factory=Counter)  # candidate boxes not kept, by reason
    candidates: int = 0


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    return image[box[1] : box[3], box[0] : box[2]]


class DifferenceAreaGenerator:
    """Candidate boxes -> crops differ -> (optionally) a crop matches its words -> most
    different first, NMS -> at most `max_boxes`. Defaults are the released Img-Diff code's."""

    def __init__(
        self,
        proposers: tuple[str, ...] = ("difference",),
        pixel_threshold: float = 0.1,
        open_px: int = 1,
        crop_threshold: float = 0.85,
        text_threshold: float | None = None,
        nms_iou: float = 0.5,
        max_boxes: int = 10,
        min_area_fraction: float = 1 / 400,
    ):
        if isinstance(proposers, str) or not isinstance(proposers, (list, tuple)) or not all(isinstance(p, str) for p in proposers):
            raise ConfigError(f"imgdiff.proposers: must be a list of proposer names, got {proposers!r}")
        if not proposers:
            raise ConfigError("imgdiff.proposers: give at least one proposer")
        self.proposers = tuple(proposers)
        self._proposers = [proposer(name) for name in self.proposers]
        for name, value, low, high in (
            ("pixel_threshold", pixel_threshold, 0.0, 1.0), ("crop_threshold", crop_threshold, -1.0, 1.0),
            ("nms_iou", nms_iou, 0.0, 1.0), ("min_area_fraction", min_area_fraction, 0.0, 1.0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ConfigError(f"imgdiff.{name}: must be a number in [{low}, {high}], got {value!r}")
        if text_threshold is not None and (isinstance(text_threshold, bool) or not isinstance(text_threshold, (int, float))):
            raise ConfigError(f"imgdiff.text_threshold: must be a number or null, got {text_threshold!r}")
        if isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes <= 0:
            raise ConfigError(f"imgdiff.max_boxes: must be a positive integer, got {max_boxes!r}")
        if isinstance(open_px, bool) or not isinstance(open_px, int) or open_px < 0:
            raise ConfigError(f"imgdiff.open_px: must be a non-negative integer, got {open_px!r}")
        self.pixel_threshold = float(pixel_threshold)
        self.open_px = open_px
        self.crop_threshold = float(crop_threshold)
        self.text_threshold = None if text_threshold is None else float(text_threshold)
        self.nms_iou = float(nms_iou)
        self.max_boxes = max_boxes
        self.min_area_fraction = float(min_area_fraction)

    def config(self) -> dict:
        return {
            "proposers": list(self.proposers), "pixel_threshold": self.pixel_threshold, "open_px": self.open_px,
            "crop_threshold": self.crop_threshold, "text_threshold": self.text_threshold, "nms_iou": self.nms_iou,
            "max_boxes": self.max_boxes, "min_area_fraction": self.min_area_fraction,
        }

    def find(self, a: np.ndarray, b: np.ndarray, scorer: CropScorer, object_a: str | None = None, object_b: str | None = None) -> DifferenceAreas:
        """The difference areas of two same-sized [H, W, 3] uint8 images."""
        if a.shape != b.shape:
            raise ValueError(f"images differ in size: {a.shape} and {b.shape}")
        height, width = a.shape[:2]
        changed = changed_mask(a, b, self.pixel_threshold, self.open_px)
        rejected: Counter = Counter()
        candidates: list[Box] = []
        for p in self._proposers:
            candidates += [box for box in p.propose(a, b, changed) if box not in candidates]
        result = DifferenceAreas([], [], rejected, len(candidates))
        min_area = self.min_area_fraction * height * width
        sized = [box for box in candidates if (box[2] - box[0]) * (box[3] - box[1]) >= min_area]
        rejected[BOX_TOO_SMALL] += len(candidates) - len(sized)
        if not sized:
            return result
        similarity = scorer.crop_similarities(a, b, sized, changed)
        differing = [(box, float(s)) for box, s in zip(sized, similarity) if s < self.crop_threshold]
        rejected[BOX_CROPS_ALIKE] += len(sized) - len(differing)
        if self.text_threshold is not None and differing and object_a and object_b:
            crops = [crop(a, box) for box, _ in differing] + [crop(b, box) for box, _ in differing]
            texts = [object_a] * len(differing) + [object_b] * len(differing)
            match = scorer.text_matches(crops, texts).reshape(2, len(differing)).max(axis=0)
            kept = [d for d, m in zip(differing, match) if m > self.text_threshold]
            rejected[BOX_TEXT_MISMATCH] += len(differing) - len(kept)
            differing = kept
        # Most different first (lowest crop similarity), ties by larger box, then NMS.
        differing.sort(key=lambda d: (d[1], -(d[0][2] - d[0][0]) * (d[0][3] - d[0][1])))
        for box, s in differing:
            if any(box_iou(box, k) > self.nms_iou for k in result.boxes):
                rejected[BOX_OVERLAP] += 1
            elif len(result.boxes) >= self.max_boxes:
                rejected[BOX_OVER_LIMIT] += 1
            else:
                result.boxes.append(box)
                result.scores.append(1.0 - s)
        return result


def region_agreement(boxes: list[Box], truth: np.ndarray) -> tuple[float, float]:
    """How well boxes cover a true changed region (a [H, W] bool mask of the pixels that differ):
    (share of those pixels inside the union of the boxes, IoU of the union of the boxes with the
    region's bounding box). For scoring the generator on real pairs; (0, 0) without boxes."""
    if not boxes or not truth.any():
        return 0.0, 0.0
    union = np.zeros(truth.shape, bool)
    for x0, y0, x1, y1 in boxes:
        union[y0:y1, x0:x1] = True
    ys, xs = np.nonzero(truth)
    region = np.zeros(truth.shape, bool)
    region[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    return float((union & truth).sum() / truth.sum()), float((union & region).sum() / (union | region).sum())
