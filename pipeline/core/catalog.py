"""The DuckDB catalog of a dataset: views over its parquet tables, defined by the files in sql/.

`catalog.duckdb` sits in the dataset folder. `refresh` (re)creates, in one read-write session:

- one view per table (`raw`, `scores`, ...) over that table's committed shards, with a `shard`
  column naming the shard each row came from (runners use it to read a view shard by shard);
- empty placeholder views for tables of optional stages that have not run (`embeddings`,
  `duplicates`), so the views that join them work anyway;
- then every `sql/*.sql` file in name order, rendered with the curation thresholds
  (`${min_width}` and friends) and the dataset folder (`${dataset}`). A file whose tables or
  columns do not exist (yet) is skipped and listed in the `foil_views` table with the reason,
  and picked up by a later refresh.

`query` opens the file read-only and refuses any statement that is not a read (CREATE, INSERT,
COPY ... TO, ATTACH, SET, INSTALL, ...), before running anything.
"""

from __future__ import annotations

import importlib.resources
import re
import string
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset

CATALOG_FILE = "catalog.duckdb"

# Where curation's CLIP score comes from: "embeddings" (foil's own, `foil embed`), or the name of
# a numeric column the url lists carried into raw's `extra` (`--keep-columns`), such as DataComp's
# precomputed `clip_l14_similarity_score`, so a pool scored elsewhere is curated without re-embedding.
CLIP_SCORE_FROM = "clip_score_from"
CLIP_SCORE_FROM_EMBEDDINGS = "embeddings"
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # also keeps the SQL literal it becomes safe

# The curation thresholds the sql/ templates may use, with their defaults. Recipes override them.
DEFAULT_THRESHOLDS: dict[str, float | str] = {
    "min_width": 32,
    "min_height": 32,
    "max_aspect_ratio": 3.0,
    "min_caption_words": 1,
    "max_caption_words": 64,
    "min_caption_chars": 3,
    "drop_flagged_captions": 1,  # 1: drop file-name, url, markup and boilerplate captions; 0: keep them
    "min_english_score": 0.0,  # langid probability of English; 0 keeps every language
    "min_clip_score": -1.0,  # cosine; -1 keeps everything (no CLIP filter)
    "clip_score_top_fraction": 1.0,  # keep the best-scoring fraction of the pool (DataComp); 1 keeps all
    CLIP_SCORE_FROM: CLIP_SCORE_FROM_EMBEDDINGS,
}

# Tables that optional stages write. Until they exist, an empty view with the columns the sql/
# files use stands in, so the curated view works before (or without) those stages.
PLACEHOLDERS = {
    "embeddings": "SELECT NULL::VARCHAR AS sample_id, NULL::FLOAT AS clip_score, NULL::VARCHAR AS model, NULL::VARCHAR AS shard WHERE false",
    "duplicates": "SELECT NULL::VARCHAR AS sample_id, NULL::VARCHAR AS duplicate_of, NULL::VARCHAR AS kind, NULL::FLOAT AS distance, NULL::VARCHAR AS shard WHERE false",
}
_NEGATIVES = (
    "SELECT NULL::VARCHAR AS sample_id, NULL::VARCHAR AS kind, NULL::VARCHAR AS caption, NULL::VARCHAR AS negative_caption, "
    "NULL::INTEGER[] AS edit_span, NULL::VARCHAR AS edit_from, NULL::VARCHAR AS edit_to, NULL::VARCHAR AS generator, "
    "NULL::VARCHAR[] AS checks, NULL::VARCHAR AS source_id, NULL::VARCHAR AS shard WHERE false"
)
PLACEHOLDERS["neg_text"] = PLACEHOLDERS["neg_knn"] = _NEGATIVES

_READ_ONLY_TYPES = {"SELECT", "EXPLAIN"}


class QueryRefused(ValueError):
    """A statement given to `foil sql` would write, attach or change settings."""


@dataclass(frozen=True)
class SqlFile:
    name: str
    text: str


def sql_files() -> list[SqlFile]:
    root = importlib.resources.files("sql")
    files = [f for f in root.iterdir() if f.name.endswith(".sql")]
    return [SqlFile(f.name, f.read_text(encoding="utf-8")) for f in sorted(files, key=lambda f: f.name)]


def validate_thresholds(values: dict[str, Any], where: str = "curate") -> dict[str, float | str]:
    thresholds = dict(DEFAULT_THRESHOLDS)
    for key, value in values.items():
        if key not in DEFAULT_THRESHOLDS:
            raise ConfigError(f"{where}.{key}: unknown threshold; known: {', '.join(DEFAULT_THRESHOLDS)}")
        if key == CLIP_SCORE_FROM:
            if not isinstance(value, str) or not _COLUMN_NAME.fullmatch(value):
                raise ConfigError(f"{where}.{key}: must be {CLIP_SCORE_FROM_EMBEDDINGS!r} or the name of a kept url-list column, got {value!r}")
            thresholds[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}.{key}: must be a number, got {value!r}")
        thresholds[key] = value
    return thresholds


CATALOG_VERSION_FILE = "_catalog_version.json"  # in a remote dataset: the version of its latest catalog refresh


def _remote_catalog_path(dataset: Dataset) -> str:
    """Where the catalog of a dataset on object storage lives: a local file in foil's cache,
    one per dataset url. It holds only view definitions, rebuilt from the shards by `refresh`,
    so each machine keeps its own and none is ever uploaded (DuckDB writes its file in place)."""
    import hashlib
    import os

    from pipeline.core.cache import default_cache_dir

    key = hashlib.blake2b(dataset.url.encode("utf-8"), digest_size=8).hexdigest()
    folder = default_cache_dir() / "catalogs"
    os.makedirs(folder, exist_ok=True)
    return str(folder / f"{key}.duckdb")


class Catalog:
    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        # Remote tables are read through the dataset's own fsspec filesystem, registered on every
        # connection (DuckDB's httpfs extension cannot be installed offline, and is not needed).
        self.path = dataset.path(CATALOG_FILE) if dataset.is_local else _remote_catalog_path(dataset)

    def _connect(self, read_only: bool, path: str | None = None) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(path or self.path, read_only=read_only)
        if not self.dataset.is_local:
            con.register_filesystem(self.dataset.fs)
        return con

    def thresholds(self) -> dict[str, float | str]:
        try:
            return validate_thresholds(self.dataset.read_json("curate.json"))
        except FileNotFoundError:
            return dict(DEFAULT_THRESHOLDS)

    def set_thresholds(self, values: dict[str, Any]) -> dict[str, float | str]:
        thresholds = validate_thresholds(values)
        self.dataset.write_json("curate.json", thresholds)
        return thresholds

    def _published_version(self) -> str | None:
        try:
            return str(self.dataset.read_json(CATALOG_VERSION_FILE)["version"])
        except (FileNotFoundError, KeyError, TypeError, ValueError):
            return None

    def _cached_version(self) -> str | None:
        con = self._connect(read_only=True)
        try:
            return con.execute("SELECT version FROM foil_catalog").fetchone()[0]
        except duckdb.Error:  # a catalog built before versions were recorded
            return None
        finally:
            con.close()

    def refresh(self, publish: bool = True) -> dict[str, str]:
        """Recreate every view. Returns {view file or table: 'ok' | 'skipped: reason'}.

        For a dataset on object storage, `publish` (what a writer does after a commit) also
        stores a new version in the bucket (`_catalog_version.json`); every machine's cached
        catalog records the version it was built at, and `connect` rebuilds a cached catalog
        whose version is not the bucket's, so a reader sees what another machine committed."""
        status: dict[str, str] = {}
        version = None
        if not self.dataset.is_local:
            import uuid

            version = uuid.uuid4().hex if publish else self._published_version()
        thresholds = self.thresholds()
        self.dataset.fs.makedirs(self.dataset.root, exist_ok=True)
        # Built whole in a new file, then renamed over the old one: no view of a table that no
        # longer exists survives (a cleared table, a bucket emptied under a cached catalog), and
        # a reader sees the old catalog or the new one, never one half refreshed.
        import os
        import uuid

        building = f"{self.path}.{uuid.uuid4().hex}.tmp"
        con = self._connect(read_only=False, path=building)
        try:
            for name in self.dataset.tables():
                table = self.dataset.table(name)
                finished = table.finished_shards()
                if not finished:
                    status[name] = "skipped: no finished shards"
                    continue
                # The committed shards only (those with a completion marker), listed: a glob
                # would also match a shard whose marker was never written.
                files = ", ".join("'" + uri.replace("'", "''") + "'" for uri in table.shard_uris(finished))
                con.execute(
                    f'CREATE OR REPLACE VIEW "{name}" AS SELECT * EXCLUDE (filename), '
                    f"regexp_extract(filename, '(part-[0-9]+)\\.parquet$', 1) AS shard "
                    f"FROM read_parquet([{files}], filename = true, union_by_name = true)"
                )
                status[name] = "ok"
            for name, select in PLACEHOLDERS.items():
                if status.get(name) != "ok":
                    con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {select}')
                    status[name] = "placeholder: empty until its stage runs"
            values = {k: repr(v) for k, v in thresholds.items()}
            values["dataset"] = self.dataset.uri().replace("'", "''")  # used inside SQL string literals
            for f in sql_files():
                try:
                    text = string.Template(f.text).substitute(values)
                except KeyError as exc:
                    raise ConfigError(f"sql/{f.name}: unknown threshold ${{{exc.args[0]}}}") from None
                try:
                    con.execute("BEGIN")
                    con.execute(text)
                    con.execute("COMMIT")
                    status[f.name] = "ok"
                except (duckdb.CatalogException, duckdb.BinderException) as exc:  # a table or column its SQL needs is absent
                    con.execute("ROLLBACK")
                    status[f.name] = f"skipped: {str(exc).splitlines()[0]}"
            con.execute("CREATE OR REPLACE TABLE foil_views (source VARCHAR, status VARCHAR)")
            con.executemany("INSERT INTO foil_views VALUES (?, ?)", sorted(status.items()))
            con.execute("CREATE OR REPLACE TABLE foil_catalog (version VARCHAR)")
            con.execute("INSERT INTO foil_catalog VALUES (?)", [version])
            con.close()
            os.replace(building, self.path)
            if publish and version is not None:
                self.dataset.write_json(CATALOG_VERSION_FILE, {"version": version})
        finally:
            con.close()
            for leftover in (building, f"{building}.wal"):
                if os.path.exists(leftover):
                    os.remove(leftover)
        return status

    def connect(self) -> duckdb.DuckDBPyConnection:
        import os

        if self.dataset.is_local:
            if not os.path.exists(self.path):
                raise ConfigError(f"{self.dataset.url} has no {CATALOG_FILE}: run a stage (or `foil demo`) first")
        elif not os.path.exists(self.path):
            # A remote dataset first opened on this machine: build its views from the shards.
            if not self.dataset.tables():
                raise ConfigError(f"{self.dataset.url} has no tables: run a stage (or `foil demo`) first")
            self.refresh(publish=False)
        elif self._cached_version() != self._published_version():
            self.refresh(publish=False)  # another machine committed since this copy was built
        return self._connect(read_only=True)

    def query(self, sql: str) -> pa.Table:
        check_read_only(sql)
        con = self.connect()
        try:
            return con.sql(sql).to_arrow_table()
        finally:
            con.close()

    def stage_view(self, view: str, columns: list[str] | None, shards: list[str], folder: str) -> None:
        """Write `view`'s rows of each of `shards` to `<folder>/<shard>.parquet` (sorted by
        sample_id; an empty file for a shard without rows), evaluating the view once.

        A view's pool-wide terms (window functions, quantiles) sit below any `WHERE shard = ?`,
        so reading it shard by shard would evaluate the whole view once per shard: quadratic in
        the dataset. One streamed pass keeps the cost linear, and memory to one batch."""
        import pyarrow.parquet as pq

        fs = self.dataset.fs
        fs.makedirs(folder, exist_ok=True)
        cols = ", ".join(f'"{c}"' for c in columns) if columns else "*"
        wanted = sorted(shards)
        con = self.connect()
        writers: dict[str, tuple[pq.ParquetWriter, Any]] = {}
        try:
            reader = con.sql(
                f'SELECT {cols}, shard AS "__shard" FROM "{view}" WHERE shard IN (SELECT unnest(?::VARCHAR[])) ORDER BY shard, sample_id',
                params=[wanted],
            ).to_arrow_reader(8192)
            schema = reader.schema.remove(reader.schema.get_field_index("__shard"))
            for batch in reader:
                table = pa.Table.from_batches([batch])
                for shard in pc.unique(table["__shard"]).to_pylist():
                    part = table.filter(pc.equal(table["__shard"], shard)).drop_columns(["__shard"])
                    if shard not in writers:
                        sink = fs.open(f"{folder}/{shard}.parquet", "wb")
                        writers[shard] = (pq.ParquetWriter(sink, schema), sink)
                    writers[shard][0].write_table(part)
        finally:
            for writer, sink in writers.values():
                writer.close()
                sink.close()
            con.close()
        for shard in wanted:
            if shard not in writers:
                with fs.open(f"{folder}/{shard}.parquet", "wb") as f:
                    pq.write_table(schema.empty_table(), f)


def check_read_only(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"cannot parse query: {str(exc).splitlines()[0]}") from None
    if not statements:
        raise QueryRefused("empty query")
    for st in statements:
        kind = st.type.name
        if kind not in _READ_ONLY_TYPES:
            raise QueryRefused(f"refused a {kind} statement: `foil sql` only runs read-only queries (SELECT, DESCRIBE, SHOW, EXPLAIN)")
