"""The benchmark file formats foil reads: SugarCrepe, image pairs (Winoground-style), zero-shot sets.

Formats (image paths are relative to an image root):

- SugarCrepe: a JSON object `{id: {"filename", "caption", "negative_caption"}}` (SugarCrepe's own
  files), or a list of such objects.
- Pairs: JSON list of `{"image_0", "image_1", "caption_0", "caption_1"}`, where caption_i
  describes image_i.
- Zero-shot: JSON list of `{"image", "label"}`.

Both the evaluation (training/eval_files.py) and the SugarCrepe import read them, so they live in
the core; a malformed file is reported with the file, the item and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.stage import ConfigError


def load_items(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid UTF-8 JSON ({exc})") from None
    if isinstance(data, dict):
        return [(str(k), v) for k, v in data.items()]
    if isinstance(data, list):
        return [(str(i), v) for i, v in enumerate(data)]
    raise ConfigError(f"{path}: expected a JSON object or list of items")


def require_field(path: Path, item_id: str, item: Any, name: str) -> str:
    if not isinstance(item, dict) or not isinstance(item.get(name), str) or not item[name]:
        raise ConfigError(f"{path}: item {item_id}: missing or empty field {name!r}")
    return item[name]


FIELDS = {
    "sugarcrepe": (("filename",), ("caption", "negative_caption")),
    "pairs": (("image_0", "image_1"), ("caption_0", "caption_1")),
    "zeroshot": (("image",), ("label",)),
}


def check_file(kind: str, path: Path, image_root: Path) -> int:
    """Validate a benchmark file up front (fields present, images exist). Returns its item count."""
    image_fields, text_fields = FIELDS[kind]
    items = load_items(path)
    for item_id, item in items:
        for name in text_fields:
            require_field(path, item_id, item, name)
        for name in image_fields:
            file = Path(image_root) / require_field(path, item_id, item, name)
            if not file.is_file():
                raise ConfigError(f"{path}: item {item_id}: image {file} not found")
    return len(items)
