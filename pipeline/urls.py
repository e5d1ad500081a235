"""Ingest url lists (parquet, csv, tsv, jsonl) into the `urls` table, the crawl's input.

Columns are renamed to foil's (`url`, `caption`), every row gets its stable `sample_id`, exact
duplicate (url, caption) rows are counted and kept once, and the rows are cut into shards of
`shard_rows`, the crawl's unit of work. Bad input is reported naming the file and column.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipeline import schema as S
from pipeline.stage import ConfigError
from pipeline.store import Dataset, shard_name

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


@dataclass
class IngestReport:
    files: int
    rows_read: int
    duplicates: int
    empty_url: int
    rows: int
    shards: int


def read_url_file(path: str, url_col: str, caption_col: str | None) -> pa.Table:
    ext = os.path.splitext(path)[1].lower()
    fmt = FORMATS.get(ext)
    if fmt is None:
        raise ConfigError(f"{path}: unknown url list format {ext!r}; use one of {', '.join(sorted(FORMATS))}")
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such file")
    try:
        if fmt == "parquet":
            table = pq.read_table(path)
        elif fmt in ("csv", "tsv"):
            table = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(column_types={url_col: pa.string(), **({caption_col: pa.string()} if caption_col else {})}),
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
    for col, flag in ((url_col, "--url-col"), (caption_col, "--caption-col")):
        if col is not None and col not in table.column_names:
            raise ConfigError(f"{path}: no column {col!r} (set {flag}); columns are: {', '.join(table.column_names)}")
    for col in filter(None, (url_col, caption_col)):
        if not pa.types.is_string(table[col].type) and not pa.types.is_large_string(table[col].type):
            raise ConfigError(f"{path}: column {col!r} must hold text, found {table[col].type}")
    caption = table[caption_col] if caption_col else pa.nulls(table.num_rows, pa.string())
    return pa.table({S.URL: table[url_col].cast(pa.string()), S.CAPTION: caption.cast(pa.string())})


def check_url_files(files: list[str], url_col: str = "url", caption_col: str | None = "caption") -> None:
    """Cheap up-front check (format, readability, columns) so bad input fails before any work."""
    if not files:
        raise ConfigError("no url list given")
    for path in files:
        read_url_file(path, url_col, caption_col)


def ingest_urls(dataset: Dataset, files: list[str], url_col: str = "url", caption_col: str | None = "caption", shard_rows: int = 1000) -> IngestReport:
    """Write the `urls` table. Rerunning with the same files produces the same shards."""
    if shard_rows <= 0:
        raise ConfigError(f"shard_rows: must be positive, got {shard_rows}")
    if not files:
        raise ConfigError("no url list given")
    tables = [read_url_file(f, url_col, caption_col) for f in files]
    table = pa.concat_tables(tables)
    rows_read = table.num_rows
    url = pc.utf8_trim_whitespace(table[S.URL])
    has_url = pc.and_(pc.is_valid(url), pc.not_equal(url, ""))
    empty_url = rows_read - pc.sum(has_url).as_py()
    table = table.set_column(0, S.URL, url).filter(has_url)
    ids = [S.sample_id(u, c) for u, c in zip(table[S.URL].to_pylist(), table[S.CAPTION].to_pylist())]
    table = table.append_column(S.SAMPLE_ID, pa.array(ids, pa.string())).select(S.URLS_SCHEMA.names)
    # keep the first occurrence of each sample_id, preserving input order
    seen: set[str] = set()
    keep = []
    for sid in ids:
        keep.append(sid not in seen)
        seen.add(sid)
    deduped = table.filter(pa.array(keep))
    out = dataset.table(S.URLS)
    out.clear()
    names = []
    for i, start in enumerate(range(0, deduped.num_rows, shard_rows)):
        names.append(shard_name(i))
        out.write_shard(names[-1], deduped.slice(start, shard_rows), stats={"rows_in": min(shard_rows, deduped.num_rows - start)})
    config = {"files": [os.path.abspath(f) for f in files], "url_col": url_col, "caption_col": caption_col, "shard_rows": shard_rows}
    out.write_manifest("urls", config, [], expected_shards=names)
    return IngestReport(len(files), rows_read, rows_read - empty_url - deduped.num_rows, empty_url, deduped.num_rows, len(names))
