"""Ingest url lists (parquet, csv, tsv, jsonl) into the `urls` table, the crawl's input.

Columns are renamed to foil's (`url`, `caption`), every row gets its stable `sample_id`, exact
duplicate (url, caption) rows are counted and kept once, and the rows are cut into shards of
`shard_rows`, the crawl's unit of work. Bad input is reported naming the file and column.

Layouts are recognised: foil's (`url`, `caption`), LAION's (`URL`, `TEXT`) and DataComp's
(`uid`, `url`, `text`, `sha256`, ...). When the url or caption column asked for is the default
name and a list does not have it, the layout's own name is used. A list's `sha256` column is
kept as `expected_sha256` (the crawl checks the download against it); `keep_columns` are kept
as one JSON object per row (`extra`), which the crawl carries into `raw`.

Ingest is incremental: lists added to an existing dataset contribute only rows whose
`sample_id` the table does not hold yet, as new shards after the last one; the shards already
there are never rewritten, so the crawl (which skips finished shards) fetches only the new
ones. Each ingested file is recorded in the manifest (`ingested`: path, size, mtime, rows read
and added), and a file recorded unchanged is not read again. The table's config is how lists
are read (`url_col`, `caption_col`, `shard_rows`, `keep_columns`), not which lists: another
config needs `overwrite`, which replaces the table (and the crawl's `raw` with it).

`shard_by_host` cuts the new rows into shards of one host each (a host's rows in order, then
cut every `shard_rows`). The crawl's per-host caps hold within a shard (its threads share one
scheduler); with one host per shard, a cluster that crawls many shards at once reaches a host
through at most as many shards as that host has, not through every shard running.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipeline.core import schema as S
from pipeline.core.stage import ConfigError, StageStats
from pipeline.core.store import Dataset, shard_name

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
STEP = "urls"
DEFAULT_URL_COL, DEFAULT_CAPTION_COL = "url", "caption"
# Where the default column is missing: the names other layouts use, first found wins.
URL_COLUMNS = ("url", "URL")  # foil, DataComp / LAION
CAPTION_COLUMNS = ("caption", "TEXT", "text")  # foil / LAION / DataComp
SHA256_COLUMN = "sha256"  # DataComp: sha256 of the original image bytes
_SHARD = re.compile(r"part-(\d+)$")


@dataclass
class IngestReport:
    files: int  # files read by this call (unchanged, already ingested files are not read)
    rows_read: int
    duplicates: int  # within the lists read now
    empty_url: int
    rows: int  # rows of the table now
    shards: int  # shards of the table now
    added_rows: int = 0
    added_shards: int = 0
    already_ingested: int = 0  # rows read now whose sample_id the table held already
    files_unchanged: int = 0  # files recorded by an earlier ingest, unchanged, not read


def _pick(names: list[str], asked: str | None, default: str, candidates: tuple[str, ...]) -> str | None:
    if asked is None or asked in names or asked != default:
        return asked
    return next((c for c in candidates if c in names), asked)


def read_url_file(path: str, url_col: str = DEFAULT_URL_COL, caption_col: str | None = DEFAULT_CAPTION_COL, keep_columns: tuple[str, ...] = ()) -> pa.Table:
    """One list as (url, caption, expected_sha256, extra)."""
    ext = os.path.splitext(path)[1].lower()
    fmt = FORMATS.get(ext)
    if fmt is None:
        raise ConfigError(f"{path}: unknown url list format {ext!r}; use one of {', '.join(sorted(FORMATS))}")
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such file")
    text_cols = {*URL_COLUMNS, *CAPTION_COLUMNS, SHA256_COLUMN, url_col, *([caption_col] if caption_col else [])}
    try:
        if fmt == "parquet":
            table = pq.read_table(path)
        elif fmt in ("csv", "tsv"):
            table = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in text_cols}),
            )
        else:
            table = pajson.read_json(path)
    except (pa.ArrowInvalid, OSError) as exc:
        reason = str(exc).splitlines()[0]
        if "UTF8" in reason or "utf-8" in reason.lower():
            reason = f"text is not valid UTF-8 ({reason})"
        raise ConfigError(f"{path}: cannot read as {fmt}: {reason}") from None
    if table.num_rows == 0:
        raise ConfigError(f"{path}: no rows")
    names = table.column_names
    url_col = _pick(names, url_col, DEFAULT_URL_COL, URL_COLUMNS)
    caption_col = _pick(names, caption_col, DEFAULT_CAPTION_COL, CAPTION_COLUMNS)
    for col, flag in ((url_col, "--url-col"), (caption_col, "--caption-col"), *((k, "--keep-columns") for k in keep_columns)):
        if col is not None and col not in names:
            raise ConfigError(f"{path}: no column {col!r} (set {flag}); columns are: {', '.join(names)}")
    for col in filter(None, (url_col, caption_col)):
        if not pa.types.is_string(table[col].type) and not pa.types.is_large_string(table[col].type):
            raise ConfigError(f"{path}: column {col!r} must hold text, found {table[col].type}")
    caption = table[caption_col] if caption_col else pa.nulls(table.num_rows, pa.string())
    expected = pa.nulls(table.num_rows, pa.string())
    if SHA256_COLUMN in names and SHA256_COLUMN not in (url_col, caption_col):
        if not pa.types.is_string(table[SHA256_COLUMN].type) and not pa.types.is_large_string(table[SHA256_COLUMN].type):
            raise ConfigError(f"{path}: column {SHA256_COLUMN!r} must hold hex digests, found {table[SHA256_COLUMN].type}")
        expected = pc.utf8_lower(pc.utf8_trim_whitespace(table[SHA256_COLUMN]))
    if keep_columns:
        rows = table.select(list(keep_columns)).to_pylist()
        extra = pa.array([json.dumps(r, default=str, ensure_ascii=False) for r in rows], pa.string())
    else:
        extra = pa.nulls(table.num_rows, pa.string())
    return pa.table({
        S.URL: table[url_col].cast(pa.string()), S.CAPTION: caption.cast(pa.string()),
        S.EXPECTED_SHA256: expected.cast(pa.string()), S.EXTRA: extra,
    })


def _keep(keep_columns: list[str] | tuple[str, ...] | str | None) -> tuple[str, ...]:
    if not keep_columns:
        return ()
    if isinstance(keep_columns, str):
        keep_columns = keep_columns.split(",")
    cols = tuple(c.strip() for c in keep_columns if c.strip())
    if len(set(cols)) != len(cols):
        raise ConfigError(f"--keep-columns: a column is named twice: {', '.join(cols)}")
    return cols


def check_url_files(files: list[str], url_col: str = DEFAULT_URL_COL, caption_col: str | None = DEFAULT_CAPTION_COL, keep_columns: tuple[str, ...] | str = ()) -> None:
    """Cheap up-front check (format, readability, columns) so bad input fails before any work."""
    if not files:
        raise ConfigError("no url list given")
    for path in files:
        read_url_file(path, url_col, caption_col, _keep(keep_columns))


def _fingerprint(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _host(url: str) -> str:
    try:
        return (urllib.parse.urlsplit(url).hostname or "").lower()
    except ValueError:  # a malformed url: the crawl records its error; here it only needs a group
        return ""


def _cut(rows: pa.Table, shard_rows: int, by_host: bool) -> list[pa.Table]:
    """The new rows as shards: every `shard_rows` in list order, or per host first."""
    if not by_host:
        return [rows.slice(begin, shard_rows) for begin in range(0, rows.num_rows, shard_rows)]
    groups: dict[str, list[int]] = {}
    for i, url in enumerate(rows[S.URL].to_pylist()):
        groups.setdefault(_host(url), []).append(i)
    shards = []
    for indices in groups.values():  # hosts in order of first appearance
        for begin in range(0, len(indices), shard_rows):
            shards.append(rows.take(pa.array(indices[begin : begin + shard_rows], pa.int64())))
    return shards


def ingest_urls(
    dataset: Dataset,
    files: list[str],
    url_col: str = DEFAULT_URL_COL,
    caption_col: str | None = DEFAULT_CAPTION_COL,
    shard_rows: int = 1000,
    overwrite: bool = False,
    keep_columns: tuple[str, ...] | list[str] | str = (),
    shard_by_host: bool = False,
) -> IngestReport:
    """Add the rows of `files` the `urls` table has not seen (by sample_id) as new shards.

    Shards are written first, each with its marker, the manifest last. A kill in between leaves
    new shards the manifest does not record; the next ingest reads their files again and finds
    those rows already present, so nothing is added twice. `overwrite` replaces the table.
    """
    if isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows <= 0:
        raise ConfigError(f"shard_rows: must be a positive integer, got {shard_rows!r}")
    if not isinstance(shard_by_host, bool):
        raise ConfigError(f"crawl.shard_by_host: must be true or false, got {shard_by_host!r}")
    if not files:
        raise ConfigError("no url list given")
    keep = _keep(keep_columns)
    files = [os.path.abspath(f) for f in files]
    config = {"stage": STEP, "params": {"url_col": url_col, "caption_col": caption_col, "shard_rows": shard_rows, "keep_columns": list(keep)}}
    if shard_by_host:  # recorded only when set, so tables ingested before the option still match
        config["params"]["shard_by_host"] = True
    target = dataset.table(S.URLS)
    if target.exists() and overwrite:
        target.clear()
    manifest = target.manifest() if target.exists() else {}
    if manifest and manifest.get("config") != config:
        raise ConfigError(
            f"table 'urls' was written with a different urls config; rerun with --overwrite to replace it "
            f"(and what was crawled from it) (was {manifest.get('config')}, now {config})"
        )
    ingested: list[dict[str, Any]] = list(manifest.get("ingested", []))
    known_files = {(e["path"], tuple(e["fingerprint"])) for e in ingested}
    for path in files:
        if not os.path.exists(path):
            raise ConfigError(f"{path}: no such file")
    fresh = [f for f in files if (f, tuple(_fingerprint(f))) not in known_files]
    unchanged = len(files) - len(fresh)

    done = target.finished_shards()
    seen: set[str] = set(target.read(columns=[S.SAMPLE_ID])[S.SAMPLE_ID].to_pylist()) if done else set()
    stats = StageStats()
    stats.counts["files"] = len(fresh)
    stats.counts["files_unchanged"] = unchanged
    parts, entries = [], []
    seen_now: set[str] = set()
    empty_url = duplicates = already = 0
    for path in fresh:
        table = read_url_file(path, url_col, caption_col, keep)
        url = pc.utf8_trim_whitespace(table[S.URL])
        has_url = pc.and_(pc.is_valid(url), pc.not_equal(url, ""))
        n_empty = table.num_rows - pc.sum(has_url).as_py()
        table = table.set_column(0, S.URL, url).filter(has_url)
        ids = [S.sample_id(u, c) for u, c in zip(table[S.URL].to_pylist(), table[S.CAPTION].to_pylist())]
        keep_row, n_dup, n_known = [], 0, 0
        for sid in ids:
            if sid in seen:  # ingested by an earlier call
                n_known += 1
            elif sid in seen_now:  # a duplicate within the lists read by this call
                n_dup += 1
            keep_row.append(sid not in seen and sid not in seen_now)
            seen_now.add(sid)
        table = table.append_column(S.SAMPLE_ID, pa.array(ids, pa.string())).select(S.URLS_SCHEMA.names).filter(pa.array(keep_row, pa.bool_()))
        parts.append(table)
        stats.rows_in += table.num_rows + n_dup + n_known + n_empty
        empty_url += n_empty
        duplicates += n_dup
        already += n_known
        entries.append({"path": path, "fingerprint": _fingerprint(path), "rows_read": table.num_rows + n_dup + n_known + n_empty, "rows_added": table.num_rows})
    new = pa.concat_tables(parts) if parts else S.URLS_SCHEMA.empty_table()
    stats.rows_out = new.num_rows
    stats.dropped.update({k: v for k, v in (("empty_url", empty_url), ("duplicate_sample_id", duplicates), ("already_ingested", already)) if v})
    summary = stats.as_dict()

    numbers = [int(m.group(1)) for m in map(_SHARD.match, done) if m]
    first = max(numbers) + 1 if numbers else 0
    added = []
    for i, rows in enumerate(_cut(new, shard_rows, shard_by_host)):
        # This ingest's counters go with its first shard (what drop_reasons sums), once.
        shard_stats = {**summary, "rows_out": rows.num_rows} if i == 0 else {"rows_in": 0, "rows_out": rows.num_rows}
        name = shard_name(first + i)
        target.write_shard(name, rows, stats=shard_stats)
        added.append(name)
    for e in entries:
        e["shards"] = added  # the shards this ingest call wrote, shared by the files it read
    if fresh or not manifest:
        target.write_manifest(STEP, config, [], extra={"ingested": ingested + entries, "stats": summary})
    final = target.finished_shards()
    return IngestReport(
        files=len(fresh), rows_read=summary["rows_in"], duplicates=duplicates, empty_url=empty_url,
        rows=sum(info.rows for info in final.values()), shards=len(final), added_rows=new.num_rows,
        added_shards=len(added), already_ingested=already, files_unchanged=unchanged,
    )
