"""Runners: feed a stage the shards of its input table and commit its output shards.

The shard is the unit of work, retry and resume. `run_shard` does one shard from start to
finish (build the stage, read the input shard, run, write the output shard atomically with its
stats) and always returns a `ShardResult`, never raises, so no failure is lost on the way back
from a worker. `LocalRunner` calls it in this process; `RayRunner` calls it as Ray tasks. Both
skip shards that already have a completion marker (resume) and retry failed ones up to
`retries` times, then record every shard's final status in the output table's manifest.

`RayRunner` pays for Ray only when Ray pays back. It attaches to a running cluster when there
is one (its `address`, `RAY_ADDRESS`, or a head started on this machine with `ray start
--head`), so a user who starts Ray once pays its start-up once. Without one, work it can finish
sooner than a new embedded cluster starts (at most `in_process_max_rows` input rows to do) runs
in this process, and so does a stage whose one process keeps every core of the machine busy
anyway (`Stage.process_cores`: a model's forward anywhere, the crawl on two cores); a stage with
nothing left to do starts nothing at all.

This module is the only place in pipeline/ that imports Ray, and only inside `RayRunner`.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipeline.core import schema as S

from pipeline.core.catalog import Catalog
from pipeline.core.stage import ConfigError, DatasetStep, Stage, StageStats, build
from pipeline.core.store import Dataset, StoreError, Table


STAGED_INPUT = "_input"  # inside the output table's folder: a view's rows, staged once per run
# Starting an embedded Ray costs seconds (3-8 s on two cores, more under load) before a shard
# runs; a crawl of a few thousand urls or a score of a few thousand images is done by then.
IN_PROCESS_MAX_ROWS = 5_000
RAY_ADDRESS_FILE = "ray_current_cluster"  # where `ray start --head` records its GCS address


@dataclass(frozen=True)
class ShardTask:
    stage: type[Stage]  # pickled by reference: a worker imports the stage's module itself
    params: dict[str, Any]
    dataset: str
    input_table: str
    output_table: str
    shard: str
    input_view: str | None = None  # read the shard through this catalog view instead of the table
    staged: str | None = None  # folder holding the view's rows, one file per shard (see Catalog.stage_view)


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


def _placement() -> dict[str, Any]:
    """Where this runs: the Ray node (its id) and the GPUs Ray gave this worker, or this host's
    name outside Ray."""
    ray = sys.modules.get("ray")  # imported already inside a Ray worker; never imported here
    if ray is not None and ray.is_initialized():
        gpus = [str(g) for g in ray.get_gpu_ids()]
        return {"node": ray.get_runtime_context().get_node_id(), **({"gpus": gpus} if gpus else {})}
    return {"node": socket.gethostname()}


def run_shard(task: ShardTask, stage: Stage | None = None) -> ShardResult:
    """Run one stage over one input shard and commit the output shard. Never raises.
    `stage` is a reused instance (its counters are reset here); None builds a fresh one."""
    start = time.perf_counter()
    try:
        if stage is None:
            stage = build(task.stage, task.params)
        stage.stats = StageStats()
        dataset = Dataset(task.dataset)
        if task.staged:
            data = pq.read_table(f"{task.staged}/{task.shard}.parquet", filesystem=dataset.fs)
            if stage.shard_columns:  # e.g. image bytes: from this shard of the table, never through the view
                own = dataset.table(task.input_table).read_shard(task.shard, columns=[S.SAMPLE_ID, *stage.shard_columns])
                position = {sid: i for i, sid in enumerate(own[S.SAMPLE_ID].to_pylist())}
                rows = pa.array([position.get(sid) for sid in data[S.SAMPLE_ID].to_pylist()], pa.int64())
                for column in stage.shard_columns:
                    data = data.append_column(column, own[column].take(rows))
        else:
            data = dataset.table(task.input_table).read_shard(task.shard, columns=stage.input_columns)
        batches = data.to_batches(max_chunksize=stage.batch_rows) if stage.batch_rows else data.combine_chunks().to_batches()
        out = pa.Table.from_batches(list(stage.run(iter(batches))), schema=stage.output_schema)
        stats = {**stage.stats.as_dict(), **_placement()}  # where it ran, kept in the shard's marker
        dataset.table(task.output_table).write_shard(task.shard, out, stats=stats)
        return ShardResult(task.shard, "done", out.num_rows, stats, seconds=time.perf_counter() - start)
    except Exception as exc:  # reported back as a status; the caller decides on retries
        detail = traceback.format_exc(limit=4)
        return ShardResult(task.shard, "failed", error=f"{type(exc).__name__}: {exc}\n{detail}", seconds=time.perf_counter() - start)


def _check_config(target: Table, stage: str, config: dict[str, Any], overwrite: bool) -> None:
    """A table written with another config is replaced only when asked (`overwrite`)."""
    if not target.exists():
        return
    previous = target.manifest().get("config")
    if overwrite:
        target.clear()
    elif previous != config:
        raise ConfigError(
            f"table {target.name!r} was written with a different {stage} config; "
            f"rerun with --overwrite to replace it (was {previous}, now {config})"
        )


def run_dataset_step(step: DatasetStep, dataset: Dataset, overwrite: bool = False) -> RunReport:
    """Commit a whole-dataset step's output tables as the runners commit a stage's shards.

    The step runs in this process (it compares rows across shards, so there is nothing to
    spread). A result that is complete, made with the same config from the same input shards,
    is kept as it is (resume). Otherwise the step runs, then every output table is cleared and
    rewritten: shards first, each with its marker, the manifest last, so a kill mid-write leaves a table without a
    manifest, which no view reads and the next run replaces.
    """
    start = time.perf_counter()
    config = {"stage": step.name} if step.append else {"stage": step.name, "params": step.config()}
    state = step.input_state(dataset)
    targets = [dataset.table(name) for name in step.outputs]
    if not step.append:
        for target in targets:
            _check_config(target, step.name, config, overwrite)
        if all(t.exists() and t.manifest().get("complete") and t.manifest().get("input_state") == state for t in targets):
            kept = sum(len(t.finished_shards()) for t in targets)
            stats = targets[0].manifest().get("stats", {})
            return RunReport(step.name, targets[0].name, kept, kept, [], stats, time.perf_counter() - start)
    step.stats = StageStats()
    written: dict[str, list[tuple[str, pa.Table]]] = {name: [] for name in step.outputs}
    for table, shard, rows in step.compute(dataset):
        if table not in written:
            raise RuntimeError(f"step {step.name!r} yielded rows for {table!r}, not one of its outputs {list(step.outputs)}")
        written[table].append((shard, rows.cast(step.outputs[table]) if rows.schema != step.outputs[table] else rows))
    results = []
    summary = step.stats.as_dict()
    for target in targets:
        if not step.append:
            target.clear()  # only now: a step that fails on the way keeps the previous result
        for i, (shard, rows) in enumerate(written[target.name]):
            # The step's counters go with its table's first shard (what `shard_stats` and
            # `drop_reasons` read), so a table's shards never count a drop twice.
            shard_stats = {**summary, "rows_out": rows.num_rows} if i == 0 else {"rows_in": 0, "rows_out": rows.num_rows}
            target.write_shard(shard, rows, stats=shard_stats)
            results.append(ShardResult(shard, "done", rows.num_rows, shard_stats))
        target.write_manifest(step.name, config, step.inputs, extra={"input_state": state, "stats": summary})
    return RunReport(step.name, targets[0].name, len(results), 0, results, summary, time.perf_counter() - start)


class _Runner:
    """Shared planning and bookkeeping; subclasses implement `_execute`."""

    def __init__(self, retries: int = 2, progress: bool = True):
        self.retries = retries
        self.progress = progress

    def run(
        self,
        stage: type[Stage],
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
        resolved = build(stage, params)  # validates parameters before any work starts
        name = stage.name
        config = {"stage": name, "params": resolved.config()}
        source = dataset.table(input_table)
        if not source.exists():
            raise StoreError(f"stage {name!r} needs table {input_table!r}, which {dataset.url} does not have yet")
        target = dataset.table(output_table)
        _check_config(target, name, config, overwrite)
        removed = target.clean_tmp()
        finished = source.finished_shards()
        all_shards = sorted(finished)
        done = target.finished_shards()
        pending = [s for s in all_shards if s not in done]
        inputs = [input_view] if input_view else [input_table]
        target.write_manifest(name, config, inputs, expected_shards=all_shards)

        staged = None
        if input_view and pending:
            staged = f"{target.root}/{STAGED_INPUT}"
            Catalog(dataset).stage_view(input_view, resolved.input_columns, pending, staged)
        tasks = [ShardTask(stage, params, dataset.url, input_table, output_table, s, input_view, staged) for s in pending]
        pending_rows = sum(finished[s].rows for s in pending)  # how much work: Ray or not (RayRunner)
        results: dict[str, ShardResult] = {}
        attempts = 0
        while tasks and attempts <= self.retries:
            attempts += 1
            desc = f"{name} (retry {attempts - 1})" if attempts > 1 else name
            for result in self._execute(tasks, desc, pending_rows):
                result.attempts = attempts
                results[result.shard] = result
            tasks = [t for t in tasks if results[t.shard].status != "done"]

        if staged and dataset.fs.exists(staged):
            dataset.fs.rm(staged, recursive=True)
        stats = StageStats()
        for info in target.finished_shards().values():
            stats.merge(info.stats)
        target.write_manifest(name, config, inputs, expected_shards=all_shards)
        report = RunReport(
            stage=name,
            output_table=output_table,
            shards_total=len(all_shards),
            shards_skipped=len(all_shards) - len(pending),
            results=[results[s] for s in sorted(results)],
            stats={**stats.as_dict(), "tmp_leftovers_removed": removed},
            seconds=time.perf_counter() - start,
        )
        return report

    def _execute(self, tasks: list[ShardTask], desc: str, rows: int):
        """Run `tasks` (`rows` input rows in all), yielding one result per task."""
        raise NotImplementedError


def _run_in_process(tasks: list[ShardTask], desc: str, progress: bool):
    reuse = bool(tasks) and tasks[0].stage.reuse_instance
    shared = build(tasks[0].stage, tasks[0].params) if reuse else None
    for task in tqdm(tasks, desc=desc, unit="shard", disable=not progress):
        yield run_shard(task, shared)


class LocalRunner(_Runner):
    """Runs shards one after another in this process (tests, notebooks, small data)."""

    def _execute(self, tasks: list[ShardTask], desc: str, rows: int):
        yield from _run_in_process(tasks, desc, self.progress)


class RayRunner(_Runner):
    """Runs shards as Ray tasks on a running cluster (`address`, `RAY_ADDRESS` or a local
    `ray start --head`); without one, small work (at most `in_process_max_rows` input rows) and
    stages whose one process uses every core of this machine (`process_cores`, unless
    in_process_max_rows is 0) in this process, and anything else on a new embedded cluster."""

    def __init__(
        self, address: str | None = None, num_cpus_per_shard: float = 1, retries: int = 2, progress: bool = True,
        in_process_max_rows: int = IN_PROCESS_MAX_ROWS, gpus_per_actor: float = 0,
    ):
        super().__init__(retries=retries, progress=progress)
        self.address = address
        self.num_cpus_per_shard = num_cpus_per_shard
        # Model stages (embed, diffusion generators: those that keep one instance per worker)
        # reserve this many GPUs per actor; Ray sets each actor's CUDA_VISIBLE_DEVICES to its own.
        self.gpus_per_actor = gpus_per_actor
        self.in_process_max_rows = in_process_max_rows
        self.ran_in_process = False  # whether the last run skipped Ray (for callers and tests)

    def _execute(self, tasks: list[ShardTask], desc: str, rows: int):
        attach = self.address or cluster_address()
        stage = tasks[0].stage if tasks else None
        small = rows <= self.in_process_max_rows
        # A stage that fills this machine's cores from one process (no cluster, no GPU per actor)
        # gains nothing from an embedded cluster; in_process_max_rows=0 still asks for Ray.
        threaded = stage is not None and stage.process_cores >= (os.cpu_count() or 1) and self.in_process_max_rows > 0
        gpu_actors = bool(self.gpus_per_actor and stage is not None and stage.reuse_instance)
        self.ran_in_process = not ray_started() and attach is None and (small or threaded) and not gpu_actors
        if self.ran_in_process:
            yield from _run_in_process(tasks, desc, self.progress)
            return
        import ray

        ensure_ray(attach)
        if tasks and tasks[0].stage.reuse_instance:
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

        @ray.remote(num_cpus=self.num_cpus_per_shard, num_gpus=self.gpus_per_actor, max_restarts=0)
        class StageActor:
            def __init__(self, stage: type[Stage], params: dict[str, Any]):
                self.stage = build(stage, params)

            def run(self, task: ShardTask) -> ShardResult:
                return run_shard(task, self.stage)

        free = ray.available_resources()
        size = max(1, min(len(tasks), int(free.get("CPU", 1) // self.num_cpus_per_shard)))
        if self.gpus_per_actor:
            gpus = ray.cluster_resources().get("GPU", 0)
            if gpus < self.gpus_per_actor:
                raise ConfigError(f"runner.gpus_per_actor: {self.gpus_per_actor:g} GPU(s) per actor, but the cluster has {gpus:g}")
            size = max(1, min(size, int(max(free.get("GPU", 0), self.gpus_per_actor) // self.gpus_per_actor)))
        first = tasks[0]
        queue = list(tasks)
        running: dict[Any, tuple[ShardTask, Any]] = {}

        def start(actor: Any) -> None:
            task = queue.pop(0)
            running[actor.run.remote(task)] = (task, actor)

        actors: list[Any] = []

        def new_actor() -> Any:
            actors.append(StageActor.remote(first.stage, first.params))
            return actors[-1]

        try:
            for _ in range(size):
                if queue:
                    start(new_actor())
            with tqdm(total=len(tasks), desc=desc, unit="shard", disable=not self.progress) as bar:
                while running:
                    ready, _ = ray.wait(list(running), num_returns=1)
                    task, actor = running.pop(ready[0])
                    try:
                        result = ray.get(ready[0])
                    except Exception as exc:  # the actor died: record the shard, replace the actor
                        result = ShardResult(task.shard, "failed", error=f"worker lost: {type(exc).__name__}: {exc}")
                        actor = new_actor()
                    bar.update(1)
                    yield result
                    if queue:
                        start(actor)
        finally:
            for actor in actors:  # their CPUs, GPUs and models go back now, not when Ray collects the handles
                ray.kill(actor)


def ray_started() -> bool:
    """Whether this process is connected to Ray already (without importing Ray to find out)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _ray_temp_dir() -> str:
    # Ray's own default (ray._common.utils.get_default_ray_temp_dir), found without importing Ray.
    if "RAY_TMPDIR" in os.environ:
        base = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux"):
        base = os.environ.get("TMPDIR", "/tmp")
    else:
        base = "/tmp" if sys.platform.startswith("darwin") else tempfile.gettempdir()
    return os.path.join(base, "ray")


def running_local_head(address_file: str | None = None) -> str | None:
    """The GCS address (HOST:PORT) of the head that `ray start --head` recorded on this machine,
    if it still accepts connections; None when none was recorded or it is gone (`ray stop`, a
    reboot, a crash leave the file behind or remove it)."""
    path = address_file or os.path.join(_ray_temp_dir(), RAY_ADDRESS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            address = f.read().strip()
    except OSError:
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return address
    except OSError:
        return None


def cluster_address() -> str | None:
    """The running cluster this process should attach to: RAY_ADDRESS (set by the user, by
    `foil --ray-address`, or by Ray inside a Ray Job), else a live local `ray start --head`."""
    return os.environ.get("RAY_ADDRESS") or running_local_head()


_EMBEDDED_WITHOUT_DASHBOARD = False  # this process started its own Ray, without the dashboard


def ensure_ray(address: str | None = None, dashboard: bool = False) -> None:
    """Start (or connect to) Ray once per process.

    It attaches to `address`, else to `cluster_address()` (RAY_ADDRESS, or a live head that
    `ray start --head` recorded). Otherwise the local cluster is a new one (`address="local"`:
    never a stale cluster left recorded in /tmp/ray). Data stages need no dashboard, and
    starting one costs 5-6 s of the 10 s an embedded Ray takes to start on a laptop; Ray Train
    needs it (its state API lives there, and its placement-group cleaner polls it), so
    `dashboard=True` starts it, on a free port rather than 8265, which Prefect's temporary server
    may hold, restarting an embedded Ray this process began without one (its stages are done).
    """
    global _EMBEDDED_WITHOUT_DASHBOARD
    import ray

    if ray.is_initialized():
        if not (dashboard and _EMBEDDED_WITHOUT_DASHBOARD):
            return
        ray.shutdown()
    address = address or cluster_address()
    _EMBEDDED_WITHOUT_DASHBOARD = False
    if address:
        ray.init(address=address)
    elif not dashboard:
        ray.init(address="local", include_dashboard=False, configure_logging=False)
        _EMBEDDED_WITHOUT_DASHBOARD = True
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ray.init(
            address="local", include_dashboard=True, dashboard_host="127.0.0.1",
            dashboard_port=port, configure_logging=False,
        )
