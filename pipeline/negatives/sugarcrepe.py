"""SugarCrepe's JSON format, both ways.

A SugarCrepe file is one kind (`replace_att.json`), an object of items
`{"<id>": {"filename", "caption", "negative_caption"}}`, with image paths relative to an image
folder (COCO val2017 for SugarCrepe itself).

- export: a dataset's negatives become one such file per kind plus an `images/` folder, so
  `foil eval --sugarcrepe DIR/*.json --images DIR/images` (or SugarCrepe's own scripts) score a
  model on them.
- import: SugarCrepe's files and the user's own COCO images become a dataset: table `raw` (the
  images) and table `neg_text` (generator `sugarcrepe:<file>`), so the benchmark can be queried
  in SQL and compared with foil's generators kind by kind.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

from pipeline.core import schema as S
from pipeline.core.benchmark_files import check_file, load_items
from pipeline.core.catalog import Catalog
from pipeline.negatives.text import SUGARCREPE_NAMES
from pipeline.core.runners import run_dataset_step
from pipeline.core.stage import ConfigError, DatasetStep
from pipeline.core.store import Dataset, atomic_write_bytes, drop_empty_tmp, shard_name

_KIND_OF_FILE = {v: k for k, v in SUGARCREPE_NAMES.items()}
_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}


def export_sugarcrepe(dataset: Dataset, out_dir: str | Path, kinds: list[str] | None = None) -> dict[str, int]:
    """Write `<out_dir>/<kind>.json` (SugarCrepe's file names for its kinds) and the images."""
    out = Path(out_dir)
    sql = (
        "SELECT n.sample_id, n.kind, n.caption, n.negative_caption, r.image FROM negatives n "
        "JOIN raw r USING (sample_id) WHERE r.image IS NOT NULL ORDER BY n.kind, n.sample_id"
    )
    rows = Catalog(dataset).query(sql).to_pylist()
    if kinds:
        rows = [r for r in rows if r["kind"] in kinds]
    if not rows:
        raise ConfigError(f"{dataset.url}: no negatives to export (run `foil negatives` first)")
    (out / "images").mkdir(parents=True, exist_ok=True)
    fs = dataset.fs  # a local folder: the catalog needs one
    files: dict[str, dict[str, Any]] = {}
    filenames: dict[str, str] = {}
    for r in rows:
        name = filenames.get(r["sample_id"])
        if name is None:  # each image once, named by its sample_id
            name = f"{r['sample_id']}.{_EXT.get(Image.open(io.BytesIO(r['image'])).format, 'img')}"
            atomic_write_bytes(fs, str(out / "images" / name), r["image"])
            filenames[r["sample_id"]] = name
        items = files.setdefault(SUGARCREPE_NAMES.get(r["kind"], r["kind"]), {})
        items[str(len(items))] = {"filename": name, "caption": r["caption"], "negative_caption": r["negative_caption"]}
    for stem, items in files.items():
        atomic_write_bytes(fs, str(out / f"{stem}.json"), json.dumps(items, indent=1, ensure_ascii=False).encode("utf-8"))
    drop_empty_tmp(out / "images")
    drop_empty_tmp(out)
    return {stem: len(items) for stem, items in files.items()}


class SugarCrepeImportStep(DatasetStep):
    """SugarCrepe files and their images -> tables `raw` (one row per image and caption) and
    `neg_text` (one row per item, generator `sugarcrepe:<file>`)."""

    name = "import_sugarcrepe"
    outputs = {S.RAW: S.RAW_SCHEMA, S.NEG_TEXT: S.NEG_TEXT_SCHEMA}

    def __init__(self, files: list[str], image_root: str):
        super().__init__()
        self.files, self.image_root = [str(f) for f in files], str(image_root)

    def config(self) -> dict[str, Any]:
        return {"files": self.files, "image_root": self.image_root}

    def compute(self, dataset: Dataset):
        root = Path(self.image_root)
        raw: dict[str, list[Any]] = {name: [] for name in S.RAW_SCHEMA.names}
        neg: dict[str, list[Any]] = {name: [] for name in S.NEG_TEXT_SCHEMA.names}
        seen: set[str] = set()
        for path in self.files:
            stem = Path(path).stem
            kind = _KIND_OF_FILE.get(stem, stem)
            for _, item in load_items(Path(path)):
                image_path = (root / item["filename"]).resolve()
                url = image_path.as_uri()
                sid = S.sample_id(url, item["caption"])
                if sid not in seen:
                    seen.add(sid)
                    blob = image_path.read_bytes()
                    try:
                        width, height = Image.open(io.BytesIO(blob)).size
                    except Exception:
                        raise ConfigError(f"{path}: image {image_path} is not a readable image") from None
                    values = {
                        S.SAMPLE_ID: sid, S.URL: url, S.CAPTION: item["caption"], S.STATUS: S.STATUS_SUCCESS,
                        S.ERROR: None, S.ERROR_KIND: None, S.WIDTH: width, S.HEIGHT: height, S.ORIGINAL_WIDTH: width,
                        S.ORIGINAL_HEIGHT: height, S.SHA256: hashlib.sha256(blob).hexdigest(), S.IMAGE: blob,
                    }
                    for key, value in values.items():
                        raw[key].append(value)
                values = {
                    S.SAMPLE_ID: sid, S.KIND: kind, S.CAPTION: item["caption"], S.NEG_CAPTION: item["negative_caption"],
                    S.EDIT_SPAN: None, S.EDIT_FROM: None, S.EDIT_TO: None, S.GENERATOR: f"sugarcrepe:{Path(path).name}",
                    S.CHECKS: [], S.SOURCE_ID: None,
                }
                for key, value in values.items():
                    neg[key].append(value)
                self.count(kind)
        self.stats.rows_in = self.stats.rows_out = len(neg[S.SAMPLE_ID])
        self.count("images", len(seen))
        yield S.RAW, shard_name(0), pa.table(raw, schema=S.RAW_SCHEMA)
        yield S.NEG_TEXT, shard_name(0), pa.table(neg, schema=S.NEG_TEXT_SCHEMA)


def import_sugarcrepe(dataset: Dataset, files: list[str | Path], image_root: str | Path) -> dict[str, int]:
    """Read SugarCrepe files (validated first: file, item and field named) into a new dataset.
    Returns items per kind."""
    if dataset.table(S.RAW).exists() or dataset.table(S.NEG_TEXT).exists():
        raise ConfigError(f"{dataset.url} already has tables: import SugarCrepe into a new dataset folder")
    for path in files:
        check_file("sugarcrepe", Path(path), Path(image_root))
    report = run_dataset_step(SugarCrepeImportStep([str(f) for f in files], str(image_root)), dataset)
    Catalog(dataset).refresh()
    return {k: v for k, v in report.stats["counts"].items() if k != "images"}
