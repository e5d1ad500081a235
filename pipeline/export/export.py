"""Export stage: training shards (image, caption, one hard negative caption and, where one
exists, a negative image, split) as parquet.

Reads the `export_rows` view (sql/35_export.sql: curated rows with one negative, and two rows per
kept Img-Diff pair) shard by shard. A row's own image comes from the same shard of `raw`
(`shard_columns`); a negative image from the one `neg_image` shard the view names for it, and an
Img-Diff row's two images from the one `imgdiff` shard holding the pair. Each of those shards is
read once per batch, for the rows the batch needs only (a parquet filter on the key), so no export
shard reads every other shard's bytes. It writes table `train`, which training reads as plain
parquet. A stable hash of the sample id (of the pair id, for an Img-Diff pair's two rows, so they
land in the same split) puts `eval_percent` percent of rows in the `eval` split, the same on every
rerun.

`write_webdataset` turns each `train` shard into a webdataset tar (`<key>.png|jpg`, `<key>.txt`,
`<key>.neg.txt` when there is a negative caption, `<key>.neg.png|jpg` when there is a negative
image, `<key>.json`), one tar per split and shard, written to a temporary name and renamed, so
readers never see a partial tar.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import uuid
from collections import defaultdict
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import schema as S
from pipeline.core.stage import ConfigError, Stage, register
from pipeline.core.store import Dataset

WEBDATASET_DIR = "train_wds"
NO_NEGATIVE_IMAGE = "none"  # the method counted for rows exported without a negative image


def split_of(sample_id: str, eval_percent: int) -> str:
    return "eval" if int(sample_id[:8], 16) % 100 < eval_percent else "train"


def _pair_split_key(pair_id: str) -> str:
    """A hex key for a pair, so both rows of an Img-Diff pair get the same split."""
    return hashlib.blake2b(pair_id.encode("utf-8"), digest_size=8).hexdigest()


def _read_rows(dataset: Dataset, table: str, shard: str, key: str, wanted: set[str], columns: list[str]) -> pa.Table:
    """The rows of one shard of `table` whose `key` is in `wanted`: a parquet filter, so row
    groups without any wanted key are not read at all."""
    path = f"{dataset.table(table).root}/{shard}.parquet"
    return pq.read_table(path, columns=[key, *columns], filters=[(key, "in", sorted(wanted))], filesystem=dataset.fs)


@register
class ExportStage(Stage):
    name = "export"
    output_schema = S.TRAIN_SCHEMA
    input_columns = [
        S.SAMPLE_ID, S.CAPTION, S.NEG_CAPTION, S.NEG_KIND, S.NEG_IMAGE_METHOD, S.NEG_IMAGE_SHARD, S.PAIR_ID, S.PAIR_SIDE, S.PAIR_SHARD,
    ]
    shard_columns = (S.IMAGE,)

    def __init__(self, eval_percent: int = 10, dataset: str | None = None):
        """`dataset`: the dataset whose `neg_image` and `imgdiff` shards hold the images the
        view's rows name (steps.export passes it); None exports no negative or pair images."""
        super().__init__()
        if not isinstance(eval_percent, int) or not 0 <= eval_percent < 100:
            raise ConfigError(f"export.eval_percent: must be an integer in [0, 100), got {eval_percent!r}")
        self.eval_percent = eval_percent
        self.dataset = Dataset(dataset) if dataset else None

    def config(self) -> dict[str, Any]:
        return {"eval_percent": self.eval_percent}  # where the dataset lives is no part of the result

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        rows = pa.Table.from_batches([batch]).to_pylist()
        images = [r.get(S.IMAGE) for r in rows]
        negative_images: list[bytes | None] = [None] * len(rows)
        self._pair_images(rows, images, negative_images)
        self._negative_images(rows, negative_images)

        kept = [i for i, image in enumerate(images) if image is not None]
        if len(kept) < len(rows):
            self.drop("no_image", len(rows) - len(kept))
        out: dict[str, list[Any]] = {name: [] for name in S.TRAIN_SCHEMA.names}
        for i in kept:
            r = rows[i]
            pair = r.get(S.PAIR_ID)
            split = split_of(_pair_split_key(pair) if pair else r[S.SAMPLE_ID], self.eval_percent)
            has_image = negative_images[i] is not None
            if r.get(S.NEG_CAPTION) is None:
                self.count("rows_without_negative")
            self.count(f"negative_image:{r.get(S.NEG_IMAGE_METHOD) if has_image else NO_NEGATIVE_IMAGE}")
            self.count(f"split:{split}")
            out[S.SAMPLE_ID].append(r[S.SAMPLE_ID])
            out[S.CAPTION].append(r[S.CAPTION])
            out[S.NEG_CAPTION].append(r.get(S.NEG_CAPTION))
            out[S.NEG_KIND].append(r.get(S.NEG_KIND))
            out[S.SPLIT].append(split)
            out[S.IMAGE].append(images[i])
            out[S.NEG_IMAGE_COL].append(negative_images[i])
        yield from pa.table(out, schema=S.TRAIN_SCHEMA).to_batches()

    def _source(self) -> Dataset:
        if self.dataset is None:
            raise ValueError("export: rows name images in neg_image or imgdiff, but the stage was built without its dataset")
        return self.dataset

    def _negative_images(self, rows: list[dict[str, Any]], negative_images: list[bytes | None]) -> None:
        """Fill the negative image of rows whose view row names a `neg_image` shard: one filtered
        read per shard. A row whose image is gone (null bytes) keeps its negative caption, counted."""
        by_shard: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            if r.get(S.NEG_IMAGE_SHARD) and r.get(S.PAIR_ID) is None:
                by_shard[r[S.NEG_IMAGE_SHARD]].append(i)
        for shard, members in sorted(by_shard.items()):
            found = _read_rows(
                self._source(), S.NEG_IMAGE, shard, S.SAMPLE_ID, {rows[i][S.SAMPLE_ID] for i in members},
                [S.NEG_CAPTION, S.METHOD, S.TRAINABLE, S.IMAGE],
            ).to_pylist()
            blobs = {(f[S.SAMPLE_ID], f[S.NEG_CAPTION], f[S.METHOD]): f[S.IMAGE] for f in found if f[S.TRAINABLE] and f[S.IMAGE]}
            for i in members:
                r = rows[i]
                negative_images[i] = blobs.get((r[S.SAMPLE_ID], r[S.NEG_CAPTION], r[S.NEG_IMAGE_METHOD]))
                if negative_images[i] is None:
                    self.count("negative_image_missing")

    def _pair_images(self, rows: list[dict[str, Any]], images: list[bytes | None], negative_images: list[bytes | None]) -> None:
        """An Img-Diff row's own image is its side of the pair, its negative image the other side."""
        by_shard: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            if r.get(S.PAIR_ID) is not None:
                by_shard[r[S.PAIR_SHARD]].append(i)
        for shard, members in sorted(by_shard.items()):
            found = _read_rows(self._source(), S.IMGDIFF, shard, S.PAIR_ID, {rows[i][S.PAIR_ID] for i in members}, [S.IMAGE_A, S.IMAGE_B])
            pairs = {f[S.PAIR_ID]: (f[S.IMAGE_A], f[S.IMAGE_B]) for f in found.to_pylist()}
            for i in members:
                a, b = pairs.get(rows[i][S.PAIR_ID], (None, None))
                own, other = (a, b) if rows[i][S.PAIR_SIDE] == "a" else (b, a)
                images[i], negative_images[i] = own, other


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
                        if r.get(S.NEG_IMAGE_COL):
                            _add(tar, f"{key}.neg.{_image_extension(r[S.NEG_IMAGE_COL])}", r[S.NEG_IMAGE_COL])
                        meta = {S.SAMPLE_ID: key, S.NEG_KIND: r[S.NEG_KIND], S.SPLIT: split}
                        _add(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            written.append(target)
    return written
