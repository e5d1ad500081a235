"""Text hard negatives: captions that differ from the positive in exactly one attribute or object.

This first generator covers SugarCrepe's replace-attribute and replace-object kinds with a
curated lexicon of co-hyponym groups: a colour is replaced by another colour, a fruit by another
fruit, never by a synonym or a word from another group, so the negative stays fluent and
plausible and differs in one content word. Choices are deterministic given (seed, sample_id).

Every candidate is checked; rejected candidates are counted by reason in the stage stats.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any, Iterator

import pyarrow as pa

from pipeline import schema as S
from pipeline.stage import ConfigError, Stage, register

GENERATOR = "foil.lexicon_replace/1"

KINDS = ("replace_attribute", "replace_object")

# Co-hyponym groups. Words inside one group are mutually exclusive alternatives, which is what
# makes a replacement a *negative* rather than a paraphrase.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black", "white", "grey", "pink"),
    "size": ("small", "large"),
    "age": ("old", "young"),
    "temperature": ("hot", "cold"),
    "mood": ("happy", "sad", "angry", "smiling", "crying", "laughing"),
    "light": ("light", "dark"),
    "direction": ("up", "down", "left", "right"),
}
OBJECTS: dict[str, tuple[str, ...]] = {
    "person": ("man", "woman", "boy", "girl", "baby", "child", "person"),
    "animal": (
        "cat", "dog", "mouse", "rabbit", "tiger", "lion", "horse", "cow", "pig", "monkey", "bear", "panda",
        "fox", "wolf", "frog", "chicken", "bird", "penguin", "fish", "whale", "dolphin", "snake", "turtle",
        "owl", "eagle", "duck", "camel", "elephant", "giraffe", "zebra", "goat", "sheep", "octopus", "crab",
    ),
    "insect": ("bee", "bug", "ant", "butterfly", "beetle", "spider", "snail", "ladybird", "cricket"),
    "fruit": (
        "apple", "pear", "banana", "grapes", "melon", "watermelon", "cherries", "strawberry", "peach",
        "lemon", "pineapple", "mango", "coconut", "tangerine", "blueberries", "kiwifruit",
    ),
    "vegetable": ("carrot", "tomato", "potato", "eggplant", "cucumber", "broccoli", "corn", "onion", "garlic"),
    "food": ("pizza", "hamburger", "sandwich", "taco", "burrito", "bread", "cheese", "cake", "cookie", "doughnut"),
    "vehicle": (
        "car", "bus", "train", "bicycle", "truck", "taxi", "ambulance", "tractor", "motorcycle", "scooter",
        "airplane", "helicopter", "boat", "ship", "rocket", "tram",
    ),
    "shape": ("circle", "square", "triangle", "diamond", "heart", "star"),
    "body": ("hand", "foot", "ear", "nose", "eye", "mouth", "leg", "arm"),
    "clothing": ("hat", "shirt", "dress", "coat", "shoe", "boot", "glove", "scarf", "sock"),
    "instrument": ("guitar", "violin", "trumpet", "drum", "piano", "saxophone", "banjo"),
    "building": ("house", "castle", "church", "school", "hospital", "hotel", "office", "factory", "stadium"),
    "weather": ("sun", "moon", "cloud", "rain", "snow", "tornado", "rainbow", "lightning"),
    "plant": ("tree", "flower", "rose", "tulip", "cactus", "leaf", "mushroom", "sunflower"),
}

_WORD = re.compile(r"[A-Za-z]+")


def _index(groups: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {word: group for group, words in groups.items() for word in words}


_ATTRIBUTE_OF = _index(ATTRIBUTES)
_OBJECT_OF = _index(OBJECTS)


def _rng(seed: int, sample_id: str, kind: str) -> random.Random:
    digest = hashlib.blake2b(f"{seed}:{sample_id}:{kind}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _match_case(template: str, word: str) -> str:
    if template.isupper():
        return word.upper()
    if template[:1].isupper():
        return word.capitalize()
    return word


def replace_candidates(caption: str, kind: str) -> list[tuple[int, int, str, str, tuple[str, ...]]]:
    """(start, end, word, group, alternatives) for every replaceable word of `kind`."""
    lexicon, groups = (_ATTRIBUTE_OF, ATTRIBUTES) if kind == "replace_attribute" else (_OBJECT_OF, OBJECTS)
    found = []
    for m in _WORD.finditer(caption):
        word = m.group(0).lower()
        group = lexicon.get(word)
        if group is not None:
            found.append((m.start(), m.end(), word, group, tuple(w for w in groups[group] if w != word)))
    return found


def make_negative(caption: str, kind: str, sample_id: str, seed: int) -> dict[str, Any] | str:
    """One negative of `kind` for `caption`, or the reason none could be made."""
    candidates = replace_candidates(caption, kind)
    if not candidates:
        return "no_candidate_word"
    rng = _rng(seed, sample_id, kind)
    start, end, word, group, alternatives = candidates[rng.randrange(len(candidates))]
    words_in_caption = {w.lower() for w in _WORD.findall(caption)}
    # Replacing "red" by "blue" in "red and blue heart" would not change the meaning's parts.
    alternatives = tuple(a for a in alternatives if a not in words_in_caption)
    if not alternatives:
        return "no_alternative_left"
    new = _match_case(caption[start:end], rng.choice(alternatives))
    negative = caption[:start] + new + caption[end:]
    if negative.strip().lower() == caption.strip().lower():
        return "identical"
    return {
        S.KIND: kind,
        S.NEG_CAPTION: negative,
        S.EDIT_SPAN: [start, end],
        S.EDIT_FROM: caption[start:end],
        S.EDIT_TO: new,
        S.CHECKS: ["differs_from_positive", f"same_group:{group}", "one_word_changed"],
    }


@register
class TextNegativesStage(Stage):
    name = "negatives"
    output_schema = S.NEG_TEXT_SCHEMA
    input_columns = [S.SAMPLE_ID, S.CAPTION]

    def __init__(self, kinds: list[str] | tuple[str, ...] = KINDS, seed: int = 0):
        super().__init__()
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ConfigError(f"negatives.kinds: unknown kind {unknown[0]!r}; known: {', '.join(KINDS)}")
        if not isinstance(seed, int):
            raise ConfigError(f"negatives.seed: must be an integer, got {seed!r}")
        self.kinds = tuple(kinds)
        self.seed = seed

    def config(self) -> dict[str, Any]:
        return {"kinds": list(self.kinds), "seed": self.seed, "generator": GENERATOR}

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        out: dict[str, list[Any]] = {name: [] for name in S.NEG_TEXT_SCHEMA.names}
        for sid, caption in zip(batch.column(S.SAMPLE_ID).to_pylist(), batch.column(S.CAPTION).to_pylist()):
            for kind in self.kinds:
                made = make_negative(caption or "", kind, sid, self.seed)
                if isinstance(made, str):
                    self.drop(f"{kind}:{made}")
                    continue
                self.count(f"made:{kind}")
                out[S.SAMPLE_ID].append(sid)
                out[S.CAPTION].append(caption)
                out[S.GENERATOR].append(GENERATOR)
                for key, value in made.items():
                    out[key].append(value)
        if out[S.SAMPLE_ID]:
            yield pa.RecordBatch.from_pydict(out, schema=S.NEG_TEXT_SCHEMA)
