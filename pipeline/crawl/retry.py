"""Retry only what may succeed: re-fetch the rows of an existing `raw` whose failure is transient.

A row is retried when `error_class(error_kind)` is `transient` (timeout, reset, 5xx, 429, host
back-off, shard deadline); permanent failures (404, opt-out, robots, blocked, decode error,
sha256 mismatch) are left as they are and get no request. The retried rows replace theirs in
place, in the same position of the same shard (one row per url still): each affected shard is
rewritten whole through the store's `write_shard` (atomic rename, then its marker), and the
manifest is rewritten from the markers last, as the runners do.

The retry runs in the calling process, shard after shard (the crawl stage's own thread pool and
per-host politeness apply within each shard). A shard in which some row changed status makes
what was computed from that shard stale, so for those shards only:

- per-shard tables computed from `raw` (scores, embeddings, neg_text, train: tables whose
  shards are raw's shards) lose those shards' completion markers, so the shards no longer count
  as committed and their manifests list them as `pending`; rerunning the stage recomputes
  exactly them;
- whole-dataset tables (dedup's `duplicates`, kNN negatives, ...) have their recorded input
  state marked stale, so their next run recomputes them instead of keeping the result.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import schema as S
from pipeline.core.stage import build
from pipeline.core.store import MARKERS, Dataset, StoreError
from pipeline.crawl.crawl import TRANSIENT, CrawlStage, error_class

# Manifest fields write_manifest sets itself; everything else is a step's `extra`.
_MANIFEST_FIELDS = {"schema_version", "table", "stage", "config", "inputs", "rows", "shards", "complete", "updated_at"}


@dataclass
class RetryReport:
    shards_rewritten: list[str] = field(default_factory=list)
    rows_retried: int = 0
    recovered: int = 0  # retried rows that are `success` now
    still_failed: dict[str, int] = field(default_factory=dict)  # status -> rows, of the retried ones
    retried_kinds: dict[str, int] = field(default_factory=dict)  # error_kind -> rows, before the retry
    downstream_cleared: dict[str, list[str]] = field(default_factory=dict)  # per-shard table -> shards removed
    downstream_stale: list[str] = field(default_factory=list)  # whole-dataset tables to recompute
    stats: dict[str, Any] = field(default_factory=dict)


def _status_counts(table: pa.Table) -> Counter:
    counts: Counter = Counter()
    for status, kind in zip(table[S.STATUS].to_pylist(), table[S.ERROR_KIND].to_pylist()):
        counts[f"status:{status}"] += 1
        if kind:
            counts[f"error_kind:{kind}"] += 1
            counts[f"error_class:{error_class(kind)}"] += 1
    return counts


def _as_crawled(table: pa.Table) -> pa.Table:
    """A raw shard in the crawl's current schema (shards from before `extra` lack it)."""
    for f in S.CRAWLED_RAW_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(S.CRAWLED_RAW_SCHEMA.names).cast(S.CRAWLED_RAW_SCHEMA)


def _crawl_input(dataset: Dataset, shard: str, rows: pa.Table) -> pa.Table:
    """The retried rows as the crawl reads them: with the list's expected sha256 and kept columns
    from the same `urls` shard, where it has them."""
    data = {S.SAMPLE_ID: rows[S.SAMPLE_ID], S.URL: rows[S.URL], S.CAPTION: rows[S.CAPTION]}
    urls = dataset.table(S.URLS)
    source = None
    if urls.exists() and shard in urls.finished_shards():
        source = urls.read_shard(shard)
    for column in (S.EXPECTED_SHA256, S.EXTRA):
        if source is not None and column in source.column_names:
            value = dict(zip(source[S.SAMPLE_ID].to_pylist(), source[column].to_pylist()))
            data[column] = pa.array([value.get(sid) for sid in rows[S.SAMPLE_ID].to_pylist()], pa.string())
        elif column in rows.column_names:
            data[column] = rows[column]
    return pa.table(data)


def retry_failed(dataset: Dataset, params: dict[str, Any]) -> RetryReport:
    """Re-fetch the transient failures of `raw` with crawl stage `params`, in place."""
    raw = dataset.table(S.RAW)
    if not raw.exists():
        raise StoreError(f"--retry-failed needs table {S.RAW!r}, which {dataset.url} does not have yet: crawl first")
    manifest = raw.manifest()
    stage = build(CrawlStage, params)
    report = RetryReport()
    totals: Counter = Counter()
    changed: list[str] = []
    for shard, info in sorted(raw.finished_shards().items()):
        rows = _as_crawled(raw.read_shard(shard))
        kinds = rows[S.ERROR_KIND].to_pylist()
        positions = [i for i, kind in enumerate(kinds) if error_class(kind) == TRANSIENT]
        if not positions:
            continue
        before = rows.take(pa.array(positions, pa.int64()))
        stage.stats = type(stage.stats)()
        batch = _crawl_input(dataset, shard, before).to_batches()
        after = pa.Table.from_batches(list(stage.run(iter(batch))), schema=S.CRAWLED_RAW_SCHEMA)
        # rows in place: position p of the shard takes row k of `after` where p = positions[k]
        index = list(range(rows.num_rows))
        for k, p in enumerate(positions):
            index[p] = rows.num_rows + k
        merged = pa.concat_tables([rows, after]).take(pa.array(index, pa.int64()))
        recovered = pc.sum(pc.equal(after[S.STATUS], S.STATUS_SUCCESS)).as_py() or 0
        stats = dict(info.stats)
        counts = Counter({k: v for k, v in stats.get("counts", {}).items() if not k.startswith(("status:", "error_kind:", "error_class:"))})
        counts.update({k: v for k, v in stage.stats.counts.items() if not k.startswith(("status:", "error_kind:", "error_class:"))})
        counts.update(_status_counts(merged))
        counts["retry_failed:rows"] += len(positions)
        counts["retry_failed:recovered"] += recovered
        stats["counts"] = dict(counts)
        raw.write_shard(shard, merged, stats=stats)
        report.shards_rewritten.append(shard)
        report.rows_retried += len(positions)
        report.recovered += recovered
        report.retried_kinds = dict(Counter(report.retried_kinds) + Counter(k for k in before[S.ERROR_KIND].to_pylist()))
        for status in after[S.STATUS].to_pylist():
            if status != S.STATUS_SUCCESS:
                report.still_failed[status] = report.still_failed.get(status, 0) + 1
        totals.update(stage.stats.counts)
        if before[S.STATUS].to_pylist() != after[S.STATUS].to_pylist():
            changed.append(shard)
    if report.shards_rewritten:
        extra = {k: v for k, v in manifest.items() if k not in _MANIFEST_FIELDS}
        raw.write_manifest(manifest["stage"], manifest["config"], manifest.get("inputs", []), expected_shards=list(manifest.get("shards", {})), extra=extra)
    if changed:
        _invalidate_downstream(dataset, set(changed), report)
    report.stats = {"counts": dict(totals)}
    return report


def _invalidate_downstream(dataset: Dataset, shards: set[str], report: RetryReport) -> None:
    for name in dataset.tables():
        if name in (S.URLS, S.RAW):
            continue
        table = dataset.table(name)
        manifest = table.manifest()
        extra = {k: v for k, v in manifest.items() if k not in _MANIFEST_FIELDS}
        if "input_state" in manifest:  # a whole-dataset step: recompute it on its next run
            if manifest.get("inputs") and manifest["input_state"] != "stale":
                extra["input_state"] = "stale"
                extra["stale_reason"] = f"raw shards rewritten by --retry-failed: {', '.join(sorted(shards))}"
                table.write_manifest(manifest["stage"], manifest["config"], manifest["inputs"], expected_shards=list(manifest.get("shards", {})), extra=extra)
                report.downstream_stale.append(name)
            continue
        hit = sorted(shards & set(table.finished_shards()))
        if not hit:
            continue
        for shard in hit:
            # Only the marker goes: a shard without one is not committed (views and reads skip
            # it) and the stage's rerun rewrites it under the same name. Its file stays until
            # then, so a catalog view made before this retry never points at a missing file.
            table.fs.rm(f"{table.root}/{MARKERS}/{shard}.json")
        table.write_manifest(manifest["stage"], manifest["config"], manifest.get("inputs", []), expected_shards=list(manifest.get("shards", {})), extra=extra)
        report.downstream_cleared[name] = hit

