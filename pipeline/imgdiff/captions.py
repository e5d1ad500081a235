"""Difference captions: what changed, and where, between the two images of a pair.

The template captioner names the replaced objects and the place of the most different box
("on the left: a red apple in the first image, a green apple in the second"), and lists where
the other boxes are. Where the object words are unknown (an imported pair), they are the words
that differ between the two captions. Captioners are looked up by name in `CAPTIONERS`
(`imgdiff.captioner`), so a local captioning model can be added under its own name.
"""

from __future__ import annotations

import difflib
import re
from typing import Callable, Protocol

import numpy as np

from pipeline.core.stage import ConfigError
from pipeline.imgdiff.areas import Box

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


class TemplateCaptioner:
    """Object pair and box positions in one sentence; needs no model."""

    def caption(self, image_a: np.ndarray, image_b: np.ndarray, boxes: list[Box], object_a: str, object_b: str) -> str:
        if not boxes:
            return ""
        height, width = image_a.shape[:2]
        places = [where(box, width, height) for box in boxes]
        text = f"{places[0]}: {with_article(object_a)} in the first image, {with_article(object_b)} in the second"
        others = list(dict.fromkeys(p for p in places[1:] if p != places[0]))
        if others:
            text += "; also changed " + ", ".join(others)
        return text


CAPTIONERS: dict[str, Callable[[], Captioner]] = {"template": TemplateCaptioner}


def captioner(name: str) -> Captioner:
    if name not in CAPTIONERS:
        raise ConfigError(f"imgdiff.captioner: unknown captioner {name!r}; known: {', '.join(sorted(CAPTIONERS))}")
    return CAPTIONERS[name]()
