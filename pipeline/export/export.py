"""Export stage: training shards (image, caption, one hard negative caption, split) as parquet.

Reads the `export_rows` view (curated rows with one text negative) shard by shard, with each
row's image taken from the same shard of `raw` (`shard_columns`), and writes table `train`, which training reads as plain parquet. A stable hash of the
sample id puts `eval_percent` percent of rows in the `eval` split, the same on every rerun.

`write_webdataset` turns each `train` shard into a webdataset tar (`<key>.png|jpg`, `<key>.txt`,
`<key>.neg.txt` when there is a negative, `<key>.json`), one tar per split and shard, written to
a temporary name and renamed, so readers never see a partial tar.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import schema as S
from pipeline.core.stage import ConfigError, Stage, register
from pipeline.core.store import Dataset

WEBDATASET_DIR = "train_wds"


def split_of(sample_id: str, eval_percent: int) -> str:
    return "eval" if int(sample_id[:8], 16) % 100 < eval_percent else "train"


@register
class ExportStage(Stage):
    name = "export"
    output_schema = S.TRAIN_SCHEMA
    input_columns = [S.SAMPLE_ID, S.CAPTION, S.NEG_CAPTION, S.NEG_KIND]
    shard_columns = (S.IMAGE,)

    def __init__(self, eval_percent: int = 10):
        super().__init__()
        if not isinstance(eval_percent, int) or not 0 <= eval_percent < 100:
            raise ConfigError(f"export.eval_percent: must be an integer in [0, 100), got {eval_percent!r}")
        self.eval_percent = eval_percent

    def config(self) -> dict[str, Any]:
        return {"eval_percent": self.eval_percent}

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches([batch])
        has_image = pc.is_valid(table[S.IMAGE])
        missing = table.num_rows - pc.sum(has_image).as_py() if table.num_rows else 0
        if missing:
            self.drop("no_image", missing)
            table = table.filter(has_image)
        without_negative = pc.sum(pc.is_null(table[S.NEG_CAPTION])).as_py() or 0
        self.count("rows_without_negative", without_negative)
        splits = pa.array([split_of(s, self.eval_percent) for s in table[S.SAMPLE_ID].to_pylist()], pa.string())
        table = table.append_column(S.SPLIT, splits).select(S.TRAIN_SCHEMA.names).cast(S.TRAIN_SCHEMA)
        for split in ("train", "eval"):
            self.count(f"split:{split}", splits.to_pylist().count(split))
        yield from table.to_batches()


def _image_extension(blob: bytes) -> str:
    if blob.startswith(b"\x89PNG"):
        return "png"
    if blob.startswith(b"\xff\xd8"):
        return "jpg"
    if blob[8:12] == b"WEBP":
        return "webp"
    return "bin"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible tars
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(dataset: Dataset, out_dir: str | None = None) -> list[str]:
    """Write every finished `train` shard as webdataset tars under `out_dir` (default
    <dataset>/train_wds/<split>/). Returns the tar paths; rewrites them on every call."""
    if not dataset.is_local:
        raise ConfigError("webdataset export writes local files; export to a local dataset folder")
    root = out_dir or dataset.path(WEBDATASET_DIR)
    written = []
    table = dataset.table(S.TRAIN)
    for shard in sorted(table.finished_shards()):
        rows = table.read_shard(shard).to_pylist()
        for split in ("train", "eval"):
            chosen = [r for r in rows if r[S.SPLIT] == split]
            if not chosen:
                continue
            folder = os.path.join(root, split)
            os.makedirs(folder, exist_ok=True)
            target = os.path.join(folder, f"{shard}.tar")
            tmp = os.path.join(folder, f".{shard}.tar.{uuid.uuid4().hex}")
            with open(tmp, "wb") as f:
                with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                    for r in chosen:
                        key = r[S.SAMPLE_ID]
                        _add(tar, f"{key}.{_image_extension(r[S.IMAGE])}", r[S.IMAGE])
                        _add(tar, f"{key}.txt", r[S.CAPTION].encode("utf-8"))
                        if r[S.NEG_CAPTION]:
                            _add(tar, f"{key}.neg.txt", r[S.NEG_CAPTION].encode("utf-8"))
                        meta = {S.SAMPLE_ID: key, S.NEG_KIND: r[S.NEG_KIND], S.SPLIT: split}
                        _add(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            written.append(target)
    return written
