"""Image pairs from outside (`foil imgdiff import`) and held-out pairs back out (`export-pairs`).

The pairs format, shared with `foil eval --pairs`: JSON lines
`{"image_a": "rel/a.png", "image_b": "rel/b.png", "caption_a": "...", "caption_b": "..."}`,
optional `"kind"`, image paths relative to an image folder. Import checks every line up front
(valid JSON, the four fields, files that exist and decode) and names the file, line and field of
the first bad one, then commits the pairs to table `imgdiff_import` (method `import`, no
generation) for `foil imgdiff` to analyse. Export writes the kept, trainable pairs of table
`imgdiff` that fall in the eval split (the pair id's hash, as `foil export` splits rows).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from pipeline.core import schema as S
from pipeline.core.stage import ConfigError, DatasetStep
from pipeline.core.store import Dataset, shard_name
from pipeline.export.export import split_of
from pipeline.imgdiff.stage import METHOD_IMPORT, empty_analysis, pair_id

PAIR_FIELDS = ("image_a", "image_b", "caption_a", "caption_b")


def read_pairs_file(path: str | Path, images: str | Path) -> list[dict[str, Any]]:
    """Every item of a pairs file, checked; each with its two images' bytes."""
    path, images = Path(path), Path(images)
    if not images.is_dir():
        raise ConfigError(f"--images: {images} is not a folder")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--pairs: {path}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8") from None
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise ConfigError(f"{path}:{number}: expected a JSON object with {', '.join(PAIR_FIELDS)}")
        for name in PAIR_FIELDS:
            if not isinstance(item.get(name), str) or not item[name].strip():
                raise ConfigError(f"{path}:{number}: missing or empty field {name!r}")
        for name in ("image_a", "image_b"):
            file = images / item[name]
            try:
                blob = file.read_bytes()
            except OSError:
                raise ConfigError(f"{path}:{number}: {name}: image {file} not found") from None
            try:
                with Image.open(io.BytesIO(blob)) as img:
                    img.verify()
            except Exception:
                raise ConfigError(f"{path}:{number}: {name}: {file} is not an image PIL can read") from None
            item[f"{name}_bytes"] = blob
        items.append(item)
    if not items:
        raise ConfigError(f"{path}: no pairs in the file")
    return items


class ImportPairs(DatasetStep):
    """A pairs file into table `imgdiff_import`, `shard_rows` pairs a shard. The file's content
    is the step's input state, so importing the same file again keeps the table, and a changed
    file (or folder) needs --overwrite."""

    name = "imgdiff_import"
    outputs = {S.IMGDIFF_IMPORT: S.IMGDIFF_SCHEMA}

    def __init__(self, pairs: str, images: str, shard_rows: int = 256):
        super().__init__()
        if isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows <= 0:
            raise ConfigError(f"--shard-rows: must be a positive integer, got {shard_rows!r}")
        self.pairs, self.images, self.shard_rows = str(pairs), str(images), shard_rows
        self._items = read_pairs_file(pairs, images)  # checked before anything is written

    def config(self) -> dict[str, Any]:
        return {"pairs": str(Path(self.pairs).resolve()), "images": str(Path(self.images).resolve()), "shard_rows": self.shard_rows}

    def input_state(self, dataset: Any) -> dict[str, Any]:
        digest = hashlib.sha256(Path(self.pairs).read_bytes())
        for item in self._items:
            digest.update(hashlib.sha256(item["image_a_bytes"] + item["image_b_bytes"]).digest())
        return {"pairs_sha256": digest.hexdigest()}

    def compute(self, dataset: Any) -> Iterator[tuple[str, str, pa.Table]]:
        for index, start in enumerate(range(0, len(self._items), self.shard_rows)):
            chunk = self._items[start : start + self.shard_rows]
            n = len(chunk)
            self.stats.rows_in += n
            self.stats.rows_out += n
            for item in chunk:
                self.count(f"kind:{item.get('kind') or 'none'}")
            yield S.IMGDIFF_IMPORT, shard_name(index), pa.Table.from_pydict({
                S.PAIR_ID: [pair_id(i["image_a_bytes"], i["image_b_bytes"], i["caption_a"], i["caption_b"]) for i in chunk],
                S.SAMPLE_ID: [None] * n,
                S.CAPTION_A: [i["caption_a"] for i in chunk],
                S.CAPTION_B: [i["caption_b"] for i in chunk],
                S.OBJECT_A: [None] * n,
                S.OBJECT_B: [None] * n,
                S.METHOD: [METHOD_IMPORT] * n,
                S.SEED: [None] * n,
                S.PIPELINE: [None] * n,
                **empty_analysis(n),
                S.TRAINABLE: [True] * n,
                S.IMAGE_A: [i["image_a_bytes"] for i in chunk],
                S.IMAGE_B: [i["image_b_bytes"] for i in chunk],
            }, schema=S.IMGDIFF_SCHEMA)


def export_pairs(dataset: Dataset, out: str | Path, images_out: str | Path, eval_percent: int = 10) -> int:
    """Write the held-out pairs of table `imgdiff` (kept, trainable, in the eval split by their
    pair id) in the pairs format, images as PNG files under `images_out`. Returns the count."""
    table = dataset.table(S.IMGDIFF)
    if not table.exists():
        raise ConfigError(f"{dataset.url} has no table `imgdiff`: run `foil imgdiff` first")
    rows = table.read()
    rows = rows.filter(pc.and_(pc.is_null(rows[S.FILTER_REASON]), pc.equal(rows[S.TRAINABLE], True)))
    images_out, out = Path(images_out), Path(out)
    images_out.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with out.open("w", encoding="utf-8") as f:
        for r in rows.to_pylist():
            if split_of(r[S.PAIR_ID], eval_percent) != "eval":
                continue
            names = []
            for side in (S.IMAGE_A, S.IMAGE_B):
                name = f"{r[S.PAIR_ID]}_{side[-1]}.png"
                with Image.open(io.BytesIO(r[side])) as img:
                    img.save(images_out / name, format="PNG")
                names.append(name)
            f.write(json.dumps({"image_a": names[0], "image_b": names[1], "caption_a": r[S.CAPTION_A], "caption_b": r[S.CAPTION_B], "kind": "imgdiff"}) + "\n")
            written += 1
    return written
