"""The one interface every data stage implements, its counters, and the registry of stages.

A stage turns Arrow record batches into Arrow record batches. It counts what it kept and, for
everything it did not pass on, why. It knows nothing about Prefect, Ray or where its input comes
from: runners (pipeline/core/runners.py) feed it shards and write what it yields.

Stages are registered under one name, their key in a recipe (`score`, `negatives`, ...), by
their own package; `pipeline.stages` looks names up and fails loudly on an unknown one.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import pyarrow as pa


ALL_CORES = float("inf")  # Stage.process_cores of a stage whose one process uses every core


class ConfigError(ValueError):
    """Bad user input at the edge (recipe, CLI flag): the message names the field."""


@dataclass
class StageStats:
    """Counters every stage gets for free. `dropped` maps a reason to a row count."""

    rows_in: int = 0
    rows_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": dict(self.dropped),
            "counts": dict(self.counts),
            "seconds": round(self.seconds, 3),
        }

    def merge(self, other: dict[str, Any]) -> None:
        self.rows_in += other.get("rows_in", 0)
        self.rows_out += other.get("rows_out", 0)
        self.dropped.update(other.get("dropped", {}))
        self.counts.update(other.get("counts", {}))
        self.seconds += other.get("seconds", 0.0)


class _Counted:
    """What stages and whole-dataset steps share: counters, and the resolved config."""

    def __init__(self) -> None:
        self.stats = StageStats()

    def drop(self, reason: str, n: int = 1) -> None:
        self.stats.dropped[reason] += n

    def count(self, what: str, n: int = 1) -> None:
        self.stats.counts[what] += n

    def config(self) -> dict[str, Any]:
        """The resolved parameters, recorded next to the output."""
        return {}


class Stage(_Counted):
    """Base class. Subclasses set `name`, `output_schema`, and implement `process`."""

    name: ClassVar[str]
    output_schema: ClassVar[pa.Schema]
    # Columns the stage reads from its input table; None reads all of them.
    input_columns: ClassVar[list[str] | None] = None
    # Read through a view: columns taken from the input table's own shard, joined by sample_id
    # (image bytes), so a view never carries them and a shard reads only its own images.
    shard_columns: ClassVar[tuple[str, ...]] = ()
    # Rows per batch handed to `process`; None hands over the whole shard as one batch.
    batch_rows: ClassVar[int | None] = 1024
    # Stages with costly set-up (a model) say so; runners then build one instance per worker and
    # reuse it for every shard (Ray: an actor pool) instead of building one per shard.
    reuse_instance: ClassVar[bool] = False
    # How many cores one process of this stage keeps busy. On one machine with no cluster to
    # attach to, the Ray runner runs a stage in this process at any size when that is every core
    # of the machine: an embedded cluster would only split those cores between workers, after
    # its own start-up. A torch model's forward (`ALL_CORES`) spreads over intra-op threads (foil
    # embed of 8,000 images on 2 cores: 21-25 s in process, 34-36 s on a new embedded Ray).
    process_cores: ClassVar[float] = 1

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def run(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Drive `process` over a stream, keeping the counters and timing."""
        for batch in batches:
            start = time.perf_counter()
            self.stats.rows_in += batch.num_rows
            for out in self.process(batch):
                self.stats.rows_out += out.num_rows
                yield out
            self.stats.seconds += time.perf_counter() - start


class DatasetStep(_Counted):
    """A whole-dataset step: it reads whole tables (rows are compared across shards, or come from
    outside the dataset) and yields the shards of one or more output tables. Dedup, kNN mining,
    url ingest, imports and training records are such steps. `run_dataset_step` commits what
    `compute` yields exactly as a runner commits a per-shard stage's shards: atomic shards with
    completion markers, a manifest with the resolved config (a changed config needs
    `overwrite`), structured stats, and a rerun that skips a complete result whose inputs did not
    change and redoes one that was killed mid-write."""

    name: ClassVar[str]
    outputs: ClassVar[dict[str, pa.Schema]]  # output table -> schema, in commit order
    inputs: ClassVar[tuple[str, ...]] = ()  # tables whose committed shards this step reads
    # Appending steps (training records) add or replace their own shards and keep the others;
    # their manifest config is the step's name only, each shard's stats hold its own config.
    append: ClassVar[bool] = False

    def compute(self, dataset: Any) -> Iterator[tuple[str, str, pa.Table]]:
        """Yield (output table, shard name, rows)."""
        raise NotImplementedError

    def input_state(self, dataset: Any) -> dict[str, Any]:
        """What the inputs were, so a rerun can tell whether the result is still current: by
        default the committed shards (name and rows) of every input table that exists."""
        state: dict[str, Any] = {}
        for name in self.inputs:
            table = dataset.table(name)
            if table.exists():
                state[name] = {shard: info.rows for shard, info in table.finished_shards().items()}
        return state


_REGISTRY: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: file a stage under its `name`. Each stage's own package calls it; the
    registry of every built-in stage is `pipeline.stages`, which imports those packages."""
    if _REGISTRY.get(cls.name, cls) is not cls:
        raise RuntimeError(f"stage {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type[Stage]]:
    return dict(_REGISTRY)


def build(cls: type[Stage], params: dict[str, Any] | None = None) -> Stage:
    """Instantiate a stage class from keyword parameters, refusing unknown ones by name."""
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in params or {}:
        if key not in accepted:
            raise ConfigError(f"{cls.name}.{key}: unknown field; known: {', '.join(accepted) or '(none)'}")
    return cls(**(params or {}))
