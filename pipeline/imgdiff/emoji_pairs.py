"""Real Img-Diff pairs from the demo's emoji sample: an emoji and its skin-tone or colour variant.

Noto draws an emoji's skin-tone variants (emoji.json `skin_variations`) and many of its colour
families ("red heart" / "blue heart", "orange book" / "green book") on the same outline, so each
is a natural pair of near-identical images that differ in one region, with captions that differ
in the words for it. `write_emoji_pairs` writes them in the pairs format `foil imgdiff import`
reads (JSON lines, image paths relative to the sample's image folder); the demo and the tests
import them.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.stage import ConfigError
from pipeline.demo.sample import IMAGE_SUBDIR

SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}
COLOUR_WORDS = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black", "white", "pink", "grey", "light blue")
# Colour variants must share their outline: alpha masks overlapping at least this much (IoU).
MIN_OUTLINE_IOU = 0.9


def _alpha(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGBA"))[:, :, 3] > 127


def _colour_key(name: str) -> tuple[str, str] | None:
    """("", "heart") for "red heart": the name with its one colour word taken out, and the word."""
    words = name.split()
    hits = [i for i, w in enumerate(words) if w in COLOUR_WORDS]
    if len(hits) != 1:
        return None
    i = hits[0]
    return " ".join(words[:i] + ["{}"] + words[i + 1 :]), words[i]


def emoji_variant_pairs(sample_dir: Path, limit: int | None = None) -> list[dict[str, str]]:
    """Pairs-format items (image_a, image_b, caption_a, caption_b, kind): every emoji with its
    single skin-tone variants, then colour families with a shared outline."""
    try:
        entries = json.loads((Path(sample_dir) / "emoji.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{sample_dir}: no emoji.json; is this an unpacked emoji-datasource-google package?") from None
    images = Path(sample_dir) / IMAGE_SUBDIR
    pairs: list[dict[str, str]] = []
    families: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for e in sorted(entries, key=lambda e: e.get("sort_order", 0)):
        name = (e.get("name") or e.get("short_name") or "").strip().lower()
        if not name or not e.get("has_img_google") or not (images / e["image"]).exists():
            continue
        for code, variant in sorted((e.get("skin_variations") or {}).items()):
            if code in SKIN_TONES and (images / variant["image"]).exists():
                pairs.append({"image_a": e["image"], "image_b": variant["image"], "caption_a": name,
                              "caption_b": f"{name}, {SKIN_TONES[code]} skin tone", "kind": "skin_tone"})
        key = _colour_key(name)
        if key:
            families.setdefault((key[0], e.get("category") or ""), []).append((key[1], e["image"]))
    for (template, _), members in families.items():
        for (colour_a, file_a), (colour_b, file_b) in combinations(members, 2):
            a, b = _alpha(images / file_a), _alpha(images / file_b)
            if a.shape == b.shape and (a & b).sum() >= MIN_OUTLINE_IOU * (a | b).sum():
                pairs.append({"image_a": file_a, "image_b": file_b, "caption_a": template.format(colour_a),
                              "caption_b": template.format(colour_b), "kind": "colour"})
    return pairs[:limit] if limit else pairs


def write_emoji_pairs(sample_dir: Path, out: Path, limit: int | None = None) -> tuple[Path, Path]:
    """Write the pairs file; returns (pairs file, the image folder its paths are relative to)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for item in emoji_variant_pairs(sample_dir, limit):
            f.write(json.dumps(item) + "\n")
    return out, Path(sample_dir) / IMAGE_SUBDIR
