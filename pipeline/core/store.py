"""The shard store: a dataset is a folder, a table is a folder of parquet shards.

Layout of one table:

    <dataset>/<table>/part-00003.parquet      committed shards (what queries see)
    <dataset>/<table>/_shards/part-00003.json  completion marker: rows and stats of that shard
    <dataset>/<table>/_tmp/...                 shards being written (never matched by queries)
    <dataset>/<table>/_manifest.json           schema version, producing stage, resolved config,
                                               input tables, row counts, per-shard status

A shard is written to `_tmp/`, flushed and fsynced, then renamed into place, so a reader (or a
DuckDB glob over `*.parquet`) only ever sees whole shards. Its marker is written the same way,
after the rename: a shard without a marker is not finished and a rerun rewrites it under the same
name, which is why reruns never duplicate rows. The manifest is rewritten by the driver from the
markers when a stage commits, so parallel workers never race on one file.

Paths may be local or any fsspec URL (`s3://bucket/ds`); fsync only applies to local files. On
object storage a shard is uploaded under `_tmp/` and then moved into place (a copy made by the
store itself, whole or not at all: an interrupted upload leaves at most a `_tmp/` object, which
no view lists), and its marker follows, as locally. Credentials and the endpoint come from the
usual places (`AWS_*` variables, `~/.aws/config`; `AWS_ENDPOINT_URL` for an S3-compatible store).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterable

import fsspec
from fsspec.implementations.local import LocalFileSystem
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import schema

MANIFEST = "_manifest.json"
MARKERS = "_shards"
TMP = "_tmp"


class StoreError(Exception):
    """A dataset or table is missing or malformed."""


def shard_name(index: int) -> str:
    return f"part-{index:05d}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ShardInfo:
    name: str
    rows: int
    stats: dict[str, Any]


class Dataset:
    """A dataset root: local path or fsspec URL."""

    def __init__(self, root: str | os.PathLike[str]):
        root = os.fspath(root)
        # Workers on other processes and machines commit shards: a cached listing of a remote
        # folder would hide them, so listings are always fresh (a marker glob per check).
        options = {} if "://" not in root or root.startswith("file://") else {"use_listings_cache": False}
        try:
            self.fs, path = fsspec.core.url_to_fs(root, **options)
        except TypeError:  # a filesystem without a listings cache
            self.fs, path = fsspec.core.url_to_fs(root)
        except (ImportError, ValueError) as exc:  # an unknown protocol, or its package missing
            raise StoreError(f"{root}: cannot open this dataset location ({exc})") from None
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = os.path.abspath(path) if self.is_local else path.rstrip("/")
        self.url = self.root if self.is_local else f"{_protocol(self.fs)}://{self.root}"

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def uri(self, *parts: str) -> str:
        """A path other tools (DuckDB, Ray) can open: plain for local, with scheme otherwise."""
        return "/".join([self.url, *parts])

    def table(self, name: str) -> "Table":
        return Table(self, name)

    def tables(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        names = []
        for entry in self.fs.ls(self.root, detail=True):
            if entry["type"] == "directory":
                name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
                if self.fs.exists(f"{self.root}/{name}/{MANIFEST}"):
                    names.append(name)
        return sorted(names)

    def write_json(self, relpath: str, payload: Any) -> str:
        target = self.path(relpath)
        atomic_write_bytes(self.fs, target, (json.dumps(payload, indent=2, default=str) + "\n").encode())
        return target

    def read_json(self, relpath: str) -> Any:
        with self.fs.open(self.path(relpath), "rb") as f:
            return json.load(f)

    def write_text(self, relpath: str, text: str) -> str:
        target = self.path(relpath)
        atomic_write_bytes(self.fs, target, text.encode("utf-8"))
        return target


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    proto = fs.protocol
    return proto[0] if isinstance(proto, (tuple, list)) else proto


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(fs: fsspec.AbstractFileSystem, target: str, write: Callable[[BinaryIO], None]) -> None:
    """Have `write` fill a temporary file in `<parent>/_tmp/`, then rename it to `target`: readers
    see the old file or the whole new one, never a part. Local files are fsynced (file, then
    folder) so a crash after the rename cannot lose them; elsewhere the move replaces the object."""
    parent = target.rsplit("/", 1)[0]
    tmp_dir = f"{parent}/{TMP}"
    fs.makedirs(tmp_dir, exist_ok=True)
    tmp = f"{tmp_dir}/{target.rsplit('/', 1)[1]}.{uuid.uuid4().hex}"
    if isinstance(fs, LocalFileSystem):
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(parent)
    else:
        with fs.open(tmp, "wb") as f:
            write(f)
        fs.mv(tmp, target)


def drop_empty_tmp(folder: str | os.PathLike[str]) -> None:
    """Remove the (empty) temporary folder that `atomic_write` leaves in a plain local output
    folder once its writes are done. Tables keep theirs: concurrent shard writers share it."""
    tmp = os.path.join(folder, TMP)
    if os.path.isdir(tmp) and not os.listdir(tmp):
        os.rmdir(tmp)


def atomic_write_bytes(fs: fsspec.AbstractFileSystem, target: str, data: bytes) -> None:
    atomic_write(fs, target, lambda f: f.write(data))


class Table:
    """One table of a dataset: committed parquet shards plus their markers and manifest."""

    def __init__(self, dataset: Dataset, name: str):
        self.dataset = dataset
        self.name = name
        self.fs = dataset.fs
        self.root = dataset.path(name)

    # -- reading -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.fs.exists(f"{self.root}/{MANIFEST}")

    def manifest(self) -> dict[str, Any]:
        if not self.exists():
            raise StoreError(f"table {self.name!r} does not exist in {self.dataset.url} (no {MANIFEST})")
        with self.fs.open(f"{self.root}/{MANIFEST}", "rb") as f:
            return json.load(f)

    def finished_shards(self) -> dict[str, ShardInfo]:
        # One listing, then every marker in one `cat`: an object store (s3fs) fetches them
        # concurrently, where an open per marker would cost a HEAD and a GET each, in turn. A
        # missing folder lists as empty.
        paths = self.fs.glob(f"{self.root}/{MARKERS}/*.json")
        markers = self.fs.cat(paths) if paths else {}
        done = {}
        for path in sorted(markers):
            info = json.loads(markers[path])
            done[info["name"]] = ShardInfo(info["name"], info["rows"], info.get("stats", {}))
        return done

    def shard_paths(self) -> list[str]:
        """Committed shard files, in order. Only shards with a marker count as committed."""
        done = self.finished_shards()
        return [f"{self.root}/{name}.parquet" for name in sorted(done)]

    def shard_uris(self, finished: dict[str, ShardInfo] | None = None) -> list[str]:
        """Committed shard files as other tools (DuckDB, Ray Data) open them (of `finished`, when
        the caller has just listed them)."""
        finished = self.finished_shards() if finished is None else finished
        return [self.dataset.uri(self.name, f"{name}.parquet") for name in sorted(finished)]

    def read(self, columns: list[str] | None = None) -> pa.Table:
        paths = self.shard_paths()
        if not paths:
            raise StoreError(f"table {self.name!r} in {self.dataset.url} has no finished shards")
        parts = [pq.read_table(p, columns=columns, filesystem=self.fs) for p in paths]
        return pa.concat_tables(parts, promote_options="default")

    def read_shard(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(f"{self.root}/{name}.parquet", columns=columns, filesystem=self.fs)

    # -- writing -----------------------------------------------------------------------------
    def write_shard(self, name: str, data: pa.Table, stats: dict[str, Any] | None = None) -> ShardInfo:
        """Write one shard atomically, then its completion marker. Safe to call again after a crash."""
        self.fs.makedirs(f"{self.root}/{MARKERS}", exist_ok=True)
        atomic_write(self.fs, f"{self.root}/{name}.parquet", lambda f: pq.write_table(data, f, compression="zstd", row_group_size=1024))
        info = ShardInfo(name, data.num_rows, stats or {})
        marker = {"name": name, "rows": data.num_rows, "stats": info.stats, "written_at": _now()}
        atomic_write_bytes(self.fs, f"{self.root}/{MARKERS}/{name}.json", json.dumps(marker, default=str).encode())
        return info

    def write_manifest(
        self,
        stage: str,
        config: dict[str, Any],
        inputs: Iterable[str],
        expected_shards: Iterable[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record what produced this table. `expected_shards` lists shards that should exist; any
        without a marker are recorded as `pending` (the stage did not finish them). `extra` adds
        fields (a whole-dataset step's input state and stats)."""
        done = self.finished_shards()
        shards: dict[str, dict[str, Any]] = {
            name: {"status": "done", "rows": info.rows, "stats": info.stats} for name, info in done.items()
        }
        for name in expected_shards or ():
            shards.setdefault(name, {"status": "pending", "rows": 0, "stats": {}})
        manifest = {
            "schema_version": schema.SCHEMA_VERSION,
            "table": self.name,
            "stage": stage,
            "config": config,
            "inputs": sorted(inputs),
            "rows": sum(s["rows"] for s in shards.values()),
            "shards": dict(sorted(shards.items())),
            "complete": all(s["status"] == "done" for s in shards.values()),
            "updated_at": _now(),
            **(extra or {}),
        }
        self.fs.makedirs(self.root, exist_ok=True)
        atomic_write_bytes(self.fs, f"{self.root}/{MANIFEST}", (json.dumps(manifest, indent=2, default=str) + "\n").encode())
        return manifest

    def clear(self) -> None:
        """Drop every shard of this table (used when a stage is rerun with a different config)."""
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)

    def clean_tmp(self) -> int:
        """Remove leftovers of writes that were killed mid-way. Returns how many were removed."""
        tmp_dir = f"{self.root}/{TMP}"
        if not self.fs.exists(tmp_dir):
            return 0
        leftovers = self.fs.ls(tmp_dir)
        for path in leftovers:
            self.fs.rm(path)
        return len(leftovers)
