"""Difference captions: what changed, and where, between the two images of a pair.

The template captioner names the replaced objects and the place of the most different box
("on the left: a red apple in the first image, a green apple in the second"), and lists where
the other boxes are. Where the object words are unknown (an imported pair), they are the words
that differ between the two captions. Captioners are looked up by name in `CAPTIONERS`
(`imgdiff.captioner`); `imgdiff.captioner` may instead be a local folder holding a transformers
image-to-text model (a VisionEncoderDecoder or BLIP `save_pretrained` folder, read offline): the
model captions the two crops of the most different box, and the sentence says where it is.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from pipeline.core.stage import ConfigError
from pipeline.imgdiff.areas import Box
from pipeline.imgdiff.local_models import load_local_model

_ROWS = ("top", "middle", "bottom")
_COLUMNS = ("left", "centre", "right")
_WORD = re.compile(r"[\w'-]+")
_FUNCTION_WORDS = {"on", "in", "at", "of", "with", "and", "or", "to", "by", "for", "from", "under", "over", "near", "is", "are",
                   "a", "an", "the", "next", "behind", "above", "below", "into", "onto", "while", "that", "which"}
_DETERMINERS = {"a", "an", "the", "two", "three", "some", "many", "one", "his", "her", "their", "its", "my", "your"}


def where(box: Box, width: int, height: int) -> str:
    """A box's place in a 3 x 3 grid of the image, in words; a box spanning most of the image is
    "across the image"."""
    if (box[2] - box[0]) > 0.7 * width and (box[3] - box[1]) > 0.7 * height:
        return "across the image"
    column = _COLUMNS[min(2, int(3 * (box[0] + box[2]) / 2 / width))]
    row = _ROWS[min(2, int(3 * (box[1] + box[3]) / 2 / height))]
    if row == "middle":
        return "in the centre" if column == "centre" else f"on the {column}"
    return f"at the {row}" if column == "centre" else f"at the {row} {column}"


def with_article(phrase: str) -> str:
    words = phrase.split()
    if not words or words[0].lower() in _DETERMINERS:
        return phrase
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def differing_words(caption_a: str, caption_b: str) -> tuple[str, str]:
    """The words of each caption that the other does not share ("red heart" / "blue heart" ->
    "red" / "blue"); the whole captions when they share none."""
    a, b = _WORD.findall(caption_a), _WORD.findall(caption_b)  # punctuation is no difference
    changed_a: list[str] = []
    changed_b: list[str] = []
    for op, i0, i1, j0, j1 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op != "equal":
            # A changed modifier is named with the word it modifies when one follows ("green
            # circle", not "green"); a function word after it ends the phrase ("cat", not "cat on").
            follow = a[i1 : i1 + 1] if i1 < len(a) and j1 < len(b) and a[i1] == b[j1] and a[i1].lower() not in _FUNCTION_WORDS else []
            changed_a += a[i0:i1] + follow
            changed_b += b[j0:j1] + follow
    # Nothing shared, or words only added on one side ("heart" / "heart, dark skin tone"): the
    # captions themselves say best what each image shows.
    if not changed_a or not changed_b or len(changed_a) == len(a) and len(changed_b) == len(b):
        return caption_a, caption_b
    return " ".join(changed_a), " ".join(changed_b)


class Captioner(Protocol):
    def caption(self, image_a: np.ndarray, image_b: np.ndarray, boxes: list[Box], object_a: str, object_b: str) -> str: ...


def _sentence(places: list[str], first: str, second: str) -> str:
    text = f"{places[0]}: {first} in the first image, {second} in the second"
    others = list(dict.fromkeys(p for p in places[1:] if p != places[0]))
    return text + ("; also changed " + ", ".join(others) if others else "")


class TemplateCaptioner:
    """Object pair and box positions in one sentence; needs no model."""

    def caption(self, image_a: np.ndarray, image_b: np.ndarray, boxes: list[Box], object_a: str, object_b: str) -> str:
        if not boxes:
            return ""
        height, width = image_a.shape[:2]
        return _sentence([where(box, width, height) for box in boxes], with_article(object_a), with_article(object_b))


class ModelCaptioner:
    """A local image-to-text model describes the most different box's crop in each image.

    The model is loaded on the first caption (a recipe check builds none), on the GPU when there
    is one. A crop the model says nothing about is named by the object words instead.
    """

    def __init__(self, folder: str, max_new_tokens: int = 24):
        self.folder = str(folder)
        self.max_new_tokens = max_new_tokens
        self._model = None

    def describe(self, crops: list[np.ndarray]) -> list[str]:
        """The model's caption of each crop (greedy decoding)."""
        import torch

        if self._model is None:
            self._model = load_local_model(self.folder, "AutoModelForImageTextToText", "imgdiff.captioner", "image-to-text model", tokenizer=True)
        with torch.no_grad():
            tokens = self._model.model.generate(pixel_values=self._model.pixels(crops), max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        return [t.strip() for t in self._model.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    def caption(self, image_a: np.ndarray, image_b: np.ndarray, boxes: list[Box], object_a: str, object_b: str) -> str:
        if not boxes:
            return ""
        x0, y0, x1, y1 = (int(v) for v in boxes[0])
        first, second = self.describe([image_a[y0:y1, x0:x1], image_b[y0:y1, x0:x1]])
        height, width = image_a.shape[:2]
        return _sentence([where(box, width, height) for box in boxes], first or with_article(object_a), second or with_article(object_b))


CAPTIONERS: dict[str, Callable[[], Captioner]] = {"template": TemplateCaptioner}


def captioner(name: str) -> Captioner:
    """A captioner by name, or a model captioner for a local model folder (one with config.json)."""
    if name in CAPTIONERS:
        return CAPTIONERS[name]()
    if isinstance(name, str) and (Path(name) / "config.json").is_file():
        return ModelCaptioner(name)
    raise ConfigError(
        f"imgdiff.captioner: unknown captioner {name!r}; known: {', '.join(sorted(CAPTIONERS))}, "
        "or a local folder holding an image-to-text model (config.json)"
    )
