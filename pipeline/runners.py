"""Runners: feed a stage the shards of its input table and commit its output shards.

The shard is the unit of work, retry and resume. `run_shard` does one shard from start to
finish (build the stage, read the input shard, run, write the output shard atomically with its
stats) and always returns a `ShardResult`, never raises, so no failure is lost on the way back
from a worker. `LocalRunner` calls it in this process; `RayRunner` calls it as Ray tasks. Both
skip shards that already have a completion marker (resume) and retry failed ones up to
`retries` times, then record every shard's final status in the output table's manifest.

This module is the only place in pipeline/ that imports Ray, and only inside `RayRunner`.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from pipeline.catalog import Catalog
from pipeline.stage import ConfigError, Stage, StageStats, build_stage, stage_class
from pipeline.store import Dataset, StoreError


@dataclass(frozen=True)
class ShardTask:
    stage: str
    params: dict[str, Any]
    dataset: str
    input_table: str
    output_table: str
    shard: str
    input_view: str | None = None  # read the shard through this catalog view instead of the table


@dataclass
class ShardResult:
    shard: str
    status: str  # "done" | "failed"
    rows_out: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 1
    seconds: float = 0.0


@dataclass
class RunReport:
    stage: str
    output_table: str
    shards_total: int
    shards_skipped: int
    results: list[ShardResult]
    stats: dict[str, Any]
    seconds: float

    @property
    def failed(self) -> list[ShardResult]:
        return [r for r in self.results if r.status != "done"]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shards_failed"] = len(self.failed)
        return d


def run_shard(task: ShardTask, stage: Stage | None = None) -> ShardResult:
    """Run one stage over one input shard and commit the output shard. Never raises.
    `stage` is a reused instance (its counters are reset here); None builds a fresh one."""
    start = time.perf_counter()
    try:
        if stage is None:
            stage = build_stage(task.stage, task.params)
        stage.stats = StageStats()
        dataset = Dataset(task.dataset)
        if task.input_view:
            data = Catalog(dataset).read_view_shard(task.input_view, task.shard, stage.input_columns)
        else:
            data = dataset.table(task.input_table).read_shard(task.shard, columns=stage.input_columns)
        batches = data.to_batches(max_chunksize=stage.batch_rows) if stage.batch_rows else data.combine_chunks().to_batches()
        out = pa.Table.from_batches(list(stage.run(iter(batches))), schema=stage.output_schema)
        dataset.table(task.output_table).write_shard(task.shard, out, stats=stage.stats.as_dict())
        return ShardResult(task.shard, "done", out.num_rows, stage.stats.as_dict(), seconds=time.perf_counter() - start)
    except Exception as exc:  # reported back as a status; the caller decides on retries
        detail = traceback.format_exc(limit=4)
        return ShardResult(task.shard, "failed", error=f"{type(exc).__name__}: {exc}\n{detail}", seconds=time.perf_counter() - start)


class _Runner:
    """Shared planning and bookkeeping; subclasses implement `_execute`."""

    def __init__(self, retries: int = 2, progress: bool = True):
        self.retries = retries
        self.progress = progress

    def run(
        self,
        stage: str,
        params: dict[str, Any],
        dataset: Dataset,
        input_table: str,
        output_table: str,
        input_view: str | None = None,
        overwrite: bool = False,
    ) -> RunReport:
        """Run `stage` over every shard of `input_table` (read through `input_view` if given,
        which must carry the `shard` column) into `output_table`, skipping finished shards."""
        start = time.perf_counter()
        resolved = build_stage(stage, params)  # validates parameters before any work starts
        config = {"stage": stage, "params": resolved.config()}
        source = dataset.table(input_table)
        if not source.exists():
            raise StoreError(f"stage {stage!r} needs table {input_table!r}, which {dataset.url} does not have yet")
        target = dataset.table(output_table)
        if target.exists():
            previous = target.manifest().get("config")
            if overwrite:
                target.clear()
            elif previous != config:
                raise ConfigError(
                    f"table {output_table!r} was written with a different {stage} config; "
                    f"rerun with --overwrite to replace it (was {previous}, now {config})"
                )
        removed = target.clean_tmp()
        all_shards = sorted(source.finished_shards())
        done = target.finished_shards()
        pending = [s for s in all_shards if s not in done]
        inputs = [input_view] if input_view else [input_table]
        target.write_manifest(stage, config, inputs, expected_shards=all_shards)

        tasks = [ShardTask(stage, params, dataset.url, input_table, output_table, s, input_view) for s in pending]
        results: dict[str, ShardResult] = {}
        attempts = 0
        while tasks and attempts <= self.retries:
            attempts += 1
            desc = f"{stage} (retry {attempts - 1})" if attempts > 1 else stage
            for result in self._execute(tasks, desc):
                result.attempts = attempts
                results[result.shard] = result
            tasks = [t for t in tasks if results[t.shard].status != "done"]

        stats = StageStats()
        for info in target.finished_shards().values():
            stats.merge(info.stats)
        target.write_manifest(stage, config, inputs, expected_shards=all_shards)
        report = RunReport(
            stage=stage,
            output_table=output_table,
            shards_total=len(all_shards),
            shards_skipped=len(all_shards) - len(pending),
            results=[results[s] for s in sorted(results)],
            stats={**stats.as_dict(), "tmp_leftovers_removed": removed},
            seconds=time.perf_counter() - start,
        )
        return report

    def _execute(self, tasks: list[ShardTask], desc: str):
        raise NotImplementedError


class LocalRunner(_Runner):
    """Runs shards one after another in this process (tests, notebooks, small data)."""

    def _execute(self, tasks: list[ShardTask], desc: str):
        reuse = bool(tasks) and stage_class(tasks[0].stage).reuse_instance
        shared = build_stage(tasks[0].stage, tasks[0].params) if reuse else None
        for task in tqdm(tasks, desc=desc, unit="shard", disable=not self.progress):
            yield run_shard(task, shared)


class RayRunner(_Runner):
    """Runs shards as Ray tasks: an embedded local cluster by default, or `address`."""

    def __init__(self, address: str | None = None, num_cpus_per_shard: float = 1, retries: int = 2, progress: bool = True):
        super().__init__(retries=retries, progress=progress)
        self.address = address
        self.num_cpus_per_shard = num_cpus_per_shard

    def _execute(self, tasks: list[ShardTask], desc: str):
        import ray

        ensure_ray(self.address)
        if tasks and stage_class(tasks[0].stage).reuse_instance:
            yield from self._execute_on_actors(tasks, desc)
            return
        remote = ray.remote(num_cpus=self.num_cpus_per_shard, max_retries=0)(run_shard)
        pending = {remote.remote(t): t for t in tasks}
        with tqdm(total=len(tasks), desc=desc, unit="shard", disable=not self.progress) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    task = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # the worker died (OOM, kill): still a status, not a loss
                        result = ShardResult(task.shard, "failed", error=f"worker lost: {type(exc).__name__}: {exc}")
                    bar.update(1)
                    yield result


    def _execute_on_actors(self, tasks: list[ShardTask], desc: str):
        """An actor pool: each actor builds the stage (and so loads its model) once, then takes
        shards one at a time. A dead actor fails only the shard it held, and is replaced."""
        import ray

        @ray.remote(num_cpus=self.num_cpus_per_shard, max_restarts=0)
        class StageActor:
            def __init__(self, stage: str, params: dict[str, Any]):
                self.stage = build_stage(stage, params)

            def run(self, task: ShardTask) -> ShardResult:
                return run_shard(task, self.stage)

        size = max(1, min(len(tasks), int(ray.available_resources().get("CPU", 1) // self.num_cpus_per_shard)))
        first = tasks[0]
        queue = list(tasks)
        running: dict[Any, tuple[ShardTask, Any]] = {}

        def start(actor: Any) -> None:
            task = queue.pop(0)
            running[actor.run.remote(task)] = (task, actor)

        for _ in range(size):
            if queue:
                start(StageActor.remote(first.stage, first.params))
        with tqdm(total=len(tasks), desc=desc, unit="shard", disable=not self.progress) as bar:
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                task, actor = running.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except Exception as exc:  # the actor died: record the shard, replace the actor
                    result = ShardResult(task.shard, "failed", error=f"worker lost: {type(exc).__name__}: {exc}")
                    actor = StageActor.remote(first.stage, first.params)
                bar.update(1)
                yield result
                if queue:
                    start(actor)


def ensure_ray(address: str | None = None) -> None:
    """Start (or connect to) Ray once per process.

    The local cluster is always a new one (`address="local"`: never a stale cluster that
    `ray start` left recorded in /tmp/ray), with its dashboard (Ray's state API lives
    there, and Ray Train's placement-group cleaner polls it) on a free port rather than 8265,
    which Prefect's temporary server may already hold.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")  # set by Ray inside a Ray Job
    if address:
        ray.init(address=address)
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ray.init(
            address="local", include_dashboard=True, dashboard_host="127.0.0.1",
            dashboard_port=port, configure_logging=False,
        )
