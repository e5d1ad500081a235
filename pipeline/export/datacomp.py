"""DataComp interop: the curated rows as DataComp's sorted uid array.

DataComp's filtering track takes a subset of its pool as a `.npy` file of uids: each uid is a
128-bit number written as 32 hex digits in the pool's `uid` column, stored as a pair of unsigned
64-bit integers (`np.dtype("u8,u8")`: the high half, then the low half) and sorted, which is what
DataComp's own scripts write and what its resharder looks rows up in by binary search.

The uids come from the url lists: crawl a DataComp list with `--keep-columns uid` and each row of
`raw` carries its uid in `extra` (view `raw_extra`). A curated row without a uid, or with one
that is not 32 hex digits, is an error naming the row: a subset file that silently lost rows
would be entered in the benchmark as a different recipe.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import fsspec
import numpy as np

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset, atomic_write, drop_empty_tmp

UID = "uid"  # DataComp's column name, kept in raw's `extra`
UID_DTYPE = np.dtype("u8,u8")
_HEX = frozenset("0123456789abcdef")


@dataclass
class DatacompUidReport:
    path: str
    curated_rows: int
    uids: int  # distinct uids written
    duplicate_uids: int  # curated rows whose uid another curated row already had

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def uid_halves(uid: str) -> tuple[int, int]:
    """'0123...cdef' (32 hex digits) -> (high 64 bits, low 64 bits). Raises ValueError."""
    text = uid.strip().lower()
    if len(text) != 32 or not set(text) <= _HEX:
        raise ValueError(f"not a 128-bit hex uid: {uid!r}")
    return int(text[:16], 16), int(text[16:], 16)


def uid_array(uids: Iterable[str]) -> np.ndarray:
    """DataComp's subset array: unique uids as (high, low) u8 pairs, sorted."""
    arr = np.array([uid_halves(u) for u in uids], dtype=UID_DTYPE)
    return np.unique(arr)  # sorted, field by field (high half, then low half)


def curated_uids(dataset: Dataset) -> list[tuple[str, str | None]]:
    """(sample_id, uid or None) of every curated row, by sample_id."""
    rows = Catalog(dataset).query(
        f"SELECT c.{S.SAMPLE_ID}, json_extract_string(x.{S.EXTRA}, '$.{UID}') AS {UID} "
        f"FROM curated c LEFT JOIN raw_extra x ON x.{S.SAMPLE_ID} = c.{S.SAMPLE_ID} ORDER BY c.{S.SAMPLE_ID}"
    ).to_pylist()
    return [(r[S.SAMPLE_ID], r[UID]) for r in rows]


def write_datacomp_uids(dataset: Dataset, out_path: str) -> DatacompUidReport:
    """Write the curated rows' uids to `out_path` (np.save format), atomically."""
    if not dataset.table(S.RAW).exists():
        raise ConfigError(f"{dataset.url}: no table 'raw'; crawl the DataComp url lists first (with --keep-columns {UID})")
    Catalog(dataset).refresh()  # the curated view as the tables and thresholds are now
    rows = curated_uids(dataset)
    if not rows:
        raise ConfigError(f"{dataset.url}: the curated view has no rows; nothing to write to {out_path}")
    missing = [sid for sid, uid in rows if uid is None]
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(rows)} curated rows carry no DataComp uid (first: sample_id {missing[0]}); "
            f"crawl the DataComp url lists with --keep-columns {UID}"
        )
    for sid, uid in rows:
        try:
            uid_halves(uid)
        except ValueError as exc:
            raise ConfigError(f"sample_id {sid}: column {UID!r}: {exc}") from None
    arr = uid_array(uid for _, uid in rows)
    # Readers see no file or the whole array: a temporary file renamed into place (fsynced when
    # local), or on object storage a temporary object moved over the target.
    fs, path = fsspec.core.url_to_fs(out_path)
    atomic_write(fs, path, lambda f: np.save(f, arr))  # a file object: np.save adds no .npy
    remote = "://" in out_path
    if not remote:
        drop_empty_tmp(os.path.dirname(path))
    return DatacompUidReport(path=out_path if remote else path, curated_rows=len(rows), uids=len(arr), duplicate_uids=len(rows) - len(arr))
