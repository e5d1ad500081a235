"""A held-out drawing style for evaluation: Twemoji minimal pairs built from the emoji names.

foil's demo trains on Noto emoji (`emoji-datasource-google`); this module fetches the same
concepts drawn by Twitter (`emoji-datasource-twitter`, CC-BY-4.0, same version line, the same
names in `emoji.json`) with `npm pack`, once, into the cache folder, and turns the names into
Winoground-style minimal pairs: two images whose captions differ in one thing, so a model has to
look at that thing to match them. Kinds, decided from the words that differ:

- `colour`: one colour word swapped ("blue heart" / "green heart");
- `skin_tone`: "X" / "X: dark skin tone" and "X: light skin tone" / "X: dark skin tone";
- `gender_age`: a person word swapped ("man cook" / "woman cook", "boy" / "girl", "older man");
- `word_swap`: any other single word swapped ("france flag" / "japan flag");
- `insertion`: one caption is the other with one word added ("heart" / "broken heart").

A pair is kept only when both images exist and differ visibly (mean absolute pixel difference on
white at 64 px above `min_pixel_difference`); everything dropped is counted by reason. The
output folder holds `pairs.jsonl` (the pairs format `foil eval --pairs` reads), `concepts.jsonl`
(one image per concept name, for retrieval), the images used, and `heldout.json` (counts, source
and licence).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.core.cache import default_cache_dir
from pipeline.core.stage import ConfigError
from pipeline.demo.sample import EMOJI_VERSION, fetch_npm_images
from pipeline.models.images import decode_image

TWEMOJI_PACKAGE = "emoji-datasource-twitter"
TWEMOJI_VERSION = EMOJI_VERSION  # the same version line as the training sample: the same names
TWEMOJI_LICENSE = "CC-BY-4.0 (Twemoji graphics by Twitter, Inc and other contributors)"
TWEMOJI_SUBDIR = "img/twitter/64"
PAIRS_FILE = "pairs.jsonl"
CONCEPTS_FILE = "concepts.jsonl"
MANIFEST_FILE = "heldout.json"

# The modifiers emoji.json keys skin variations by, named as Unicode's CLDR names them.
SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}
# Which tones are paired with what: the default (yellow) drawing and the lightest against the darkest.
SKIN_TONE_PAIRS = ((None, "1F3FF"), ("1F3FB", "1F3FF"))
COLOUR_WORDS = frozenset("red orange yellow green blue purple brown black white grey gray pink blond silver gold".split())
GENDER_AGE_WORDS = frozenset("man woman person men women people boy girl child baby adult older old mans womans".split())

KIND_COLOUR, KIND_SKIN_TONE, KIND_GENDER_AGE, KIND_WORD_SWAP, KIND_INSERTION = "colour", "skin_tone", "gender_age", "word_swap", "insertion"
KINDS = (KIND_COLOUR, KIND_SKIN_TONE, KIND_GENDER_AGE, KIND_WORD_SWAP, KIND_INSERTION)
# A frame with many fillers ("* flag": ~200 countries) would drown the rest; each frame gives at
# most this many pairs, neighbours in sorted order, so the choice is deterministic.
MAX_PAIRS_PER_FRAME = 8
MIN_PIXEL_DIFFERENCE = 0.02  # mean |a - b| on a 0..1 scale, both on white at 64 px

_TOKEN = re.compile(r"[\w'-]+|[^\w\s]")


def twemoji_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"{TWEMOJI_PACKAGE}-{TWEMOJI_VERSION}"


def fetch_twemoji(cache_dir: Path | None = None) -> Path:
    """The unpacked Twemoji package (emoji.json + 64 px PNGs), fetched with `npm pack` if not cached."""
    return fetch_npm_images(TWEMOJI_PACKAGE, TWEMOJI_VERSION, TWEMOJI_SUBDIR, twemoji_dir(cache_dir))


@dataclass(frozen=True)
class Concept:
    image: str  # file name under img/twitter/64
    caption: str  # lower-cased Unicode name, as the training sample captions its images
    base: str  # the caption of the emoji without skin tone (equal to caption for the default)
    tone: str | None  # SKIN_TONES key, or None for the default drawing


def twemoji_concepts(package_dir: Path) -> list[Concept]:
    """Every Twemoji drawing with an image: the default ones and their single skin-tone variants."""
    try:
        entries = json.loads((package_dir / "emoji.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{package_dir}: no emoji.json; is this an unpacked {TWEMOJI_PACKAGE} package?") from None
    images = package_dir / TWEMOJI_SUBDIR
    concepts = []
    for e in sorted(entries, key=lambda e: e.get("sort_order", 0)):
        name = (e.get("name") or e.get("short_name") or "").strip().lower()
        if not name or not e.get("has_img_twitter") or not (images / e["image"]).is_file():
            continue
        concepts.append(Concept(e["image"], name, name, None))
        for tone, variant in sorted((e.get("skin_variations") or {}).items()):
            if tone in SKIN_TONES and variant.get("has_img_twitter") and (images / variant["image"]).is_file():
                concepts.append(Concept(variant["image"], f"{name}: {SKIN_TONES[tone]} skin tone", name, tone))
    return concepts


@dataclass(frozen=True)
class Pair:
    a: Concept
    b: Concept
    kind: str


def _kind_of_swap(word_a: str, word_b: str) -> str:
    if word_a in COLOUR_WORDS and word_b in COLOUR_WORDS:
        return KIND_COLOUR
    if word_a in GENDER_AGE_WORDS and word_b in GENDER_AGE_WORDS:
        return KIND_GENDER_AGE
    return KIND_WORD_SWAP


def candidate_pairs(concepts: list[Concept]) -> list[Pair]:
    """Minimal pairs from the names, before the image checks."""
    default = [c for c in concepts if c.tone is None]
    by_caption = {c.caption: c for c in default}  # a repeated name keeps its first drawing
    pairs: list[Pair] = []
    tokens = {caption: tuple(_TOKEN.findall(caption)) for caption in by_caption}
    # One-word swaps: captions of the same length that agree everywhere but one position share a
    # frame (the caption with that position blanked).
    frames: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for caption, words in tokens.items():
        for i in range(len(words)):
            frames[words[:i] + ("*",) + words[i + 1:]].append(caption)
    for frame, captions in sorted(frames.items()):
        position = frame.index("*")
        ordered = sorted(captions)
        for first, second in itertools.islice(zip(ordered, ordered[1:]), MAX_PAIRS_PER_FRAME):
            kind = _kind_of_swap(tokens[first][position], tokens[second][position])
            pairs.append(Pair(by_caption[first], by_caption[second], kind))
    # Insertions: dropping one word of a caption gives another caption.
    by_tokens = {words: caption for caption, words in tokens.items()}
    for caption, words in sorted(tokens.items()):
        shorter = {words[:i] + words[i + 1:] for i in range(len(words)) if len(words) > 1 and words[i].isalpha()}
        for other in sorted(by_tokens[s] for s in shorter if s in by_tokens):
            pairs.append(Pair(by_caption[other], by_caption[caption], KIND_INSERTION))
    # Skin tones: the variants of one emoji.
    variants: dict[str, dict[str | None, Concept]] = defaultdict(dict)
    for c in concepts:
        variants[c.base].setdefault(c.tone, c)
    for base, tones in sorted(variants.items()):
        for tone_a, tone_b in SKIN_TONE_PAIRS:
            if tone_a in tones and tone_b in tones:
                pairs.append(Pair(tones[tone_a], tones[tone_b], KIND_SKIN_TONE))
    return pairs


def pixel_difference(image_a: bytes, image_b: bytes, size: int = 64) -> float:
    """Mean absolute difference of two images on white, 0..1."""
    a = decode_image(image_a, size).astype(np.float32)
    b = decode_image(image_b, size).astype(np.float32)
    return float(np.abs(a - b).mean() / 255.0)


@dataclass(frozen=True)
class HeldoutResult:
    out_dir: Path
    pairs: int
    concepts: int
    kept: dict[str, int]  # pairs per kind
    dropped: dict[str, int]  # candidates dropped per reason


def build_heldout(package_dir: Path, out_dir: Path, min_pixel_difference: float = MIN_PIXEL_DIFFERENCE, progress: Callable[[str], None] | None = None) -> HeldoutResult:
    """Write the minimal-pair file, the concept list and their images into `out_dir` (replaced
    as a whole: the new folder is built next to it and renamed into place)."""
    if not 0.0 <= min_pixel_difference < 1.0:
        raise ConfigError(f"min_pixel_difference: must be in [0, 1), got {min_pixel_difference}")
    concepts = twemoji_concepts(package_dir)
    if not concepts:
        raise ConfigError(f"{package_dir}: no Twemoji images found under {TWEMOJI_SUBDIR}")
    images = package_dir / TWEMOJI_SUBDIR
    dropped: Counter[str] = Counter()
    kept_pairs: list[Pair] = []
    seen: set[frozenset[str]] = set()
    candidates = candidate_pairs(concepts)
    blobs: dict[str, bytes] = {}

    def blob(name: str) -> bytes:
        if name not in blobs:
            blobs[name] = (images / name).read_bytes()
        return blobs[name]

    for n, pair in enumerate(candidates, 1):
        key = frozenset((pair.a.caption, pair.b.caption))
        if key in seen:
            dropped["duplicate_pair"] += 1
        elif pair.a.image == pair.b.image:
            dropped["same_image"] += 1
        elif pixel_difference(blob(pair.a.image), blob(pair.b.image)) < min_pixel_difference:
            dropped["not_visibly_different"] += 1
        else:
            kept_pairs.append(pair)
        seen.add(key)
        if progress and n % 500 == 0:
            progress(f"checked {n}/{len(candidates)} candidate pairs")
    # Retrieval: every default drawing, one per concept name.
    retrieval: dict[str, Concept] = {}
    for c in concepts:
        if c.tone is None:
            retrieval.setdefault(c.caption, c)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        (tmp / "images").mkdir()
        used = {p.a.image for p in kept_pairs} | {p.b.image for p in kept_pairs} | {c.image for c in retrieval.values()}
        for name in sorted(used):
            shutil.copyfile(images / name, tmp / "images" / name)
        with open(tmp / PAIRS_FILE, "w", encoding="utf-8") as f:
            for p in kept_pairs:
                f.write(json.dumps({"image_a": f"images/{p.a.image}", "image_b": f"images/{p.b.image}",
                                    "caption_a": p.a.caption, "caption_b": p.b.caption, "kind": p.kind}) + "\n")
        with open(tmp / CONCEPTS_FILE, "w", encoding="utf-8") as f:
            for c in retrieval.values():
                f.write(json.dumps({"image": f"images/{c.image}", "caption": c.caption}) + "\n")
        kept = dict(sorted(Counter(p.kind for p in kept_pairs).items()))
        manifest = {
            "source": f"npm:{TWEMOJI_PACKAGE}@{TWEMOJI_VERSION}", "license": TWEMOJI_LICENSE,
            "min_pixel_difference": min_pixel_difference, "max_pairs_per_frame": MAX_PAIRS_PER_FRAME,
            "candidates": len(candidates), "pairs": len(kept_pairs), "pairs_per_kind": kept,
            "dropped": dict(sorted(dropped.items())), "concepts": len(retrieval),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return HeldoutResult(out_dir, len(kept_pairs), len(retrieval), kept, dict(sorted(dropped.items())))
