"""The one interface every data stage implements, its counters, and the registry of stages.

A stage turns Arrow record batches into Arrow record batches. It counts what it kept and, for
everything it did not pass on, why. It knows nothing about Prefect, Ray or where its input comes
from: runners (pipeline/runners.py) feed it shards and write what it yields.

Stages are registered under one name, the name of their module and their key in a recipe
(`score`, `negatives`, ...). An unknown name fails loudly with the list of known ones.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import pyarrow as pa


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


class Stage:
    """Base class. Subclasses set `name`, `output_schema`, and implement `process`."""

    name: ClassVar[str]
    output_schema: ClassVar[pa.Schema]
    # Columns the stage reads from its input table; None reads all of them.
    input_columns: ClassVar[list[str] | None] = None
    # Rows per batch handed to `process`; None hands over the whole shard as one batch.
    batch_rows: ClassVar[int | None] = 1024
    # Stages with costly set-up (a model) say so; runners then build one instance per worker and
    # reuse it for every shard (Ray: an actor pool) instead of building one per shard.
    reuse_instance: ClassVar[bool] = False

    def __init__(self) -> None:
        self.stats = StageStats()

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

    def drop(self, reason: str, n: int = 1) -> None:
        self.stats.dropped[reason] += n

    def count(self, what: str, n: int = 1) -> None:
        self.stats.counts[what] += n

    def config(self) -> dict[str, Any]:
        """The resolved parameters of this stage, recorded next to its output."""
        return {}


_REGISTRY: dict[str, Callable[..., Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    if cls.name in _REGISTRY:
        raise RuntimeError(f"stage {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def stage_names() -> list[str]:
    _load_builtin_stages()
    return sorted(_REGISTRY)


def stage_class(name: str) -> type[Stage]:
    _load_builtin_stages()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown stage {name!r}; known stages: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_stage(name: str, params: dict[str, Any] | None = None) -> Stage:
    """Instantiate a registered stage from its name and keyword parameters (validated here)."""
    cls = stage_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in params or {}:
        if key not in accepted:
            raise ConfigError(f"{name}.{key}: unknown field; known: {', '.join(accepted) or '(none)'}")
    return cls(**(params or {}))


def _load_builtin_stages() -> None:
    # Imported for their @register side effect; kept here so the registry is always complete.
    from pipeline import crawl, embed, export, negatives_text, score  # noqa: F401
