"""Ray Train entry point: a `TorchTrainer` job around `training.loop.train_loop`.

Data streams from the `train` table's parquet shards through Ray Data (each worker gets its
own split, so a dataset larger than memory works). Decoding (PNG/JPEG to uint8 arrays,
tokenizing) runs in Ray Data's own actors, `DECODE_AHEAD` batches ahead of the training step,
so the step never waits for it; reads and decoding are given no CPU reservation, so they never
block the training workers from being placed on a small machine. Ray Data runs that pipeline
again for every epoch (a new actor pool each time, ~10 s on a laptop); a training split whose
decoded arrays fit in `DECODE_ONCE_BYTES` is decoded once and kept in Ray's object store, so
later epochs cost only the shuffle; one of at most `IN_PROCESS_MAX_ROWS` rows is decoded by the
driver itself, before any actor starts (faster than starting them). Each worker is given its share
of the node's CPUs (Ray then sets its torch thread count to that share; with one CPU reserved,
as Ray Train's default, torch on a 2-core laptop would run one thread and half as fast as the
same loop in a plain process).

Rank 0 writes a checkpoint every `checkpoint_every` steps and at the end. A checkpoint holds
`open_clip_model.pt` (open_clip's state-dict format, loadable with
`open_clip.create_model_and_transforms(arch, pretrained=PATH)`) and `train_state.pt`
(optimizer, scheduler, step). Rerunning with the same output folder and run name resumes from the
last checkpoint: Ray Train restores its checkpoint manager from storage.

This module and flows/ are the only places that import Ray in training.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from pipeline.core import schema as S
from pipeline.core.runners import IN_PROCESS_MAX_ROWS
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset, atomic_write_bytes
from pipeline.models import factory as M
from training.batching import epoch_batches
from training.data import BatchDecoder
from training.loop import cosine_with_warmup, make_optimizer, train_loop
from training.config import TrainConfig
from training.losses import build_loss

CHECKPOINT_MODEL = "open_clip_model.pt"
CHECKPOINT_STATE = "train_state.pt"
CHECKPOINT_PREFIX = "checkpoint_step_"  # a checkpoint's folder: CHECKPOINT_PREFIX + the step, 7 digits
DECODE_AHEAD = 4  # decoded batches kept ready per worker (Ray Data's iterator prefetch)
FAMILY_WINDOW = 16  # batches per window within which `families` batching groups rows on a Ray worker
DECODE_ONCE_BYTES = 512 * 2**20  # decoded training splits up to this size are decoded once, not every epoch


def _endless_batches(shard: Any, batch_size: int, seed: int, batching: str = "random") -> Iterator[dict[str, torch.Tensor]]:
    """Decoded batches (see `BatchDecoder`) of this worker's split, epoch after epoch, on the CPU:
    the loop trims the captions' padding there, before it copies a batch to the device. With
    `families` batching, Ray Data hands over windows of `FAMILY_WINDOW` batches and the
    families are grouped within each window (training/batching.py)."""
    window = batch_size * (FAMILY_WINDOW if batching == "families" else 1)
    epoch = 0
    while True:
        produced = 0
        rng = np.random.default_rng(seed + epoch)
        for block in shard.iter_batches(
            batch_size=window, batch_format="numpy", drop_last=batching == "random", local_shuffle_buffer_size=window * 4,
            local_shuffle_seed=seed + epoch, prefetch_batches=DECODE_AHEAD,
        ):
            picks = [slice(None)] if batching == "random" else epoch_batches(block, batch_size, rng, batching)
            for pick in picks:
                produced += 1
                yield {k: torch.from_numpy(np.ascontiguousarray(v[pick])) for k, v in block.items()}
        if produced == 0:
            raise RuntimeError(f"this worker's data split has fewer than batch_size={batch_size} training rows")
        epoch += 1


def _footers(files: list[str]) -> Iterator[pq.FileMetaData]:
    for uri in files:
        fs, path = fsspec.core.url_to_fs(uri)
        with fs.open(path, "rb") as f:
            yield pq.ParquetFile(f).metadata


def print_progress(step: int, steps: int, metrics: dict[str, float], rate_unit: str) -> None:
    """One line of training progress on stdout."""
    print(
        f"[foil train] step {step}/{steps} loss {metrics['loss']:.4f} "
        f"lr {metrics['lr']:.2e} {metrics['samples_per_second']:.1f} {rate_unit}",
        flush=True,
    )


def negative_image_rows(files: list[str]) -> int:
    """Rows of the `train` shards with a negative image, from the parquet footers' null counts
    (no image bytes are read). A row group without statistics counts as having them all."""
    total = 0
    for meta in _footers(files):
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        if S.NEG_IMAGE_COL not in names:
            continue
        index = names.index(S.NEG_IMAGE_COL)
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            stats = group.column(index).statistics
            nulls = stats.null_count if stats is not None and stats.has_null_count else 0
            total += group.num_rows - nulls
    return total


def training_inputs(dataset_root: str, cfg: TrainConfig) -> tuple[list[str], list[str], bool]:
    """(the committed `train` shards, the columns to read, whether negative images are encoded).
    Negative images are encoded only when some row has one (a second image batch per step)."""
    files = Dataset(dataset_root).table(S.TRAIN).shard_uris()  # committed shards only (with a marker)
    if not files:
        raise ConfigError(f"{dataset_root} has no training shards: run `foil export` first")
    columns = [S.CAPTION, S.NEG_CAPTION, S.IMAGE, S.SPLIT]
    with_images = cfg.use_negatives and cfg.use_negative_images and negative_image_rows(files) > 0
    if with_images:
        columns.append(S.NEG_IMAGE_COL)
    return files, columns, with_images


def shard_rows(files: list[str]) -> int:
    """Rows in the shards (every split), from the footers."""
    return sum(meta.num_rows for meta in _footers(files))


def decoded_bytes(rows: int, model: str) -> int:
    """The decoded size of `rows` rows as `BatchDecoder` makes them: two uint8 images and two
    token rows each."""
    size = M.image_size(model)
    return rows * (2 * size * size * 3 + 2 * 8 * M.context_length(model) + 2)


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:07d}"


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, step: int, name: str) -> None:
    """Both checkpoint files into `folder`: the open_clip weights and the optimizer/scheduler state."""
    M.save_open_clip_checkpoint(model, folder / CHECKPOINT_MODEL, step, name)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step}, folder / CHECKPOINT_STATE)


def restore_checkpoint(open_file: Any, model: torch.nn.Module, optimizer: Any, scheduler: Any, device: torch.device) -> int:
    """Load a checkpoint written by `save_checkpoint` (`open_file(name)` opens one of its files
    for reading); returns its step."""
    with open_file(CHECKPOINT_MODEL) as f:
        model.load_state_dict(torch.load(f, map_location=device, weights_only=True)["state_dict"])
    with open_file(CHECKPOINT_STATE) as f:
        state = torch.load(f, map_location=device, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["step"]


def train_split(uri: str, columns: list[str]) -> pa.Table:
    """The `train` rows of one shard (any fsspec URI), those columns only."""
    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f, columns=columns)
    return table.filter(pc.equal(table[S.SPLIT], "train"))


def decode_in_process(files: list[str], columns: list[str], model: str, block_rows: int) -> list[pa.Table]:
    """The `train` split of the shards decoded here, in blocks of `block_rows` rows (tensor
    columns Ray Data hands back as the same numpy arrays `BatchDecoder` made). Blocks of one
    batch each let every epoch's split between workers start at once (one large block makes
    each epoch wait seconds for it to be sliced)."""
    from ray.data.extensions import ArrowTensorArray

    decode = BatchDecoder(model)
    blocks = []
    for uri in files:
        table = train_split(uri, columns)
        for start in range(0, table.num_rows, block_rows):
            batch = decode(table.slice(start, block_rows).to_pydict())
            blocks.append(pa.table({k: ArrowTensorArray.from_numpy(v) if v.ndim > 1 else v for k, v in batch.items()}))
    return blocks


def train_func(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config["train"])
    use_gpu = config["use_gpu"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed + rank)
    torch.set_num_threads(config.get("cpus", 1))  # its reserved CPUs; Ray leaves torch at one thread otherwise
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")

    model = M.create_model(cfg.model, pretrained=cfg.pretrained, device=device)
    optimizer = make_optimizer(model, cfg.loop_config(use_gpu))
    scheduler = cosine_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            start_step = restore_checkpoint(lambda name: open(Path(ckpt_dir) / name, "rb"), model, optimizer, scheduler, device)
    model = ray.train.torch.prepare_model(model) if world > 1 else model
    core = model.module if hasattr(model, "module") else model

    batches = _endless_batches(ray.train.get_dataset_shard("train"), cfg.batch_size, cfg.seed, cfg.batching)
    loss_fn = build_loss(cfg.loss, rank=rank, world_size=world)

    # Where each worker runs (Ray node ids, by rank), recorded with the start of the attempt.
    nodes = [ray.get_runtime_context().get_node_id()]
    if world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, nodes[0])
        nodes = gathered
    curve = CurveWriter(config["curve_path"]) if rank == 0 else None
    if curve is not None:  # where this attempt starts: 0, or the restored checkpoint's step
        curve.append({"event": "start", "step": start_step, "world_size": world, "nodes": nodes})
        print(f"[foil train] {'resuming at' if start_step else 'starting at'} step {start_step} of {cfg.steps}", flush=True)

    def on_step(step: int, metrics: dict[str, float]) -> None:
        if curve is not None:
            # Ray keeps only the metrics reported with checkpoints; the full curve goes to a file.
            curve.append({**metrics, "step": step})
            print_progress(step, cfg.steps, metrics, "samples/s/worker")  # forwarded to the driver's console by Ray

    def on_checkpoint(step: int, metrics: dict[str, float]) -> None:
        # Every worker reports (a report is a barrier across workers); only rank 0 writes files.
        # Ray keeps nothing of a report without a checkpoint, so foil reports only with one.
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_checkpoint(Path(tmp), core, optimizer, scheduler, step, cfg.model)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({**metrics, "step": step}, checkpoint=ckpt, checkpoint_dir_name=checkpoint_dir_name(step))

    # The loop calls model(image=..., text=...) and model.encode_text: DDP forwards the former.
    train_loop(_Forwarder(model, core), batches, loss_fn, optimizer, scheduler, cfg.loop_config(use_gpu), start_step, device, on_step, on_checkpoint)


class _Forwarder(torch.nn.Module):
    """Lets the loop call `encode_text` on the inner model while `forward` goes through DDP."""

    def __init__(self, wrapped: torch.nn.Module, core: torch.nn.Module):
        super().__init__()
        self.wrapped = wrapped
        self.core = core
        self.logit_scale = core.logit_scale
        self.accepts_short_text = getattr(core, "accepts_short_text", False)  # see ShortTextCLIP
        self.pad_id = getattr(core, "pad_id", 0)

    def forward(self, **kwargs: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.wrapped(**kwargs)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.core.encode_text(text, normalize=normalize)


class CurveWriter:
    """The run's `curve.jsonl` next to its checkpoints, local or on any fsspec filesystem.
    Object stores cannot append, so the (small) file is rewritten whole, atomically, on every entry."""

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.path = fsspec.core.url_to_fs(uri)
        self.lines = self.fs.cat_file(self.path).decode().splitlines() if self.fs.exists(self.path) else []

    def append(self, entry: dict[str, Any]) -> None:
        self.lines.append(json.dumps(entry))
        atomic_write_bytes(self.fs, self.path, ("\n".join(self.lines) + "\n").encode())  # never half a file


def read_curve(uri: str | Path) -> list[dict[str, float]]:
    """The logged steps of a run, one per step: a resumed attempt rewrites the steps after its
    checkpoint, and the last write of a step wins. `start` events are skipped."""
    fs, path = fsspec.core.url_to_fs(str(uri))
    by_step: dict[int, dict[str, float]] = {}
    if fs.exists(path):
        for line in fs.cat_file(path).decode().splitlines():
            row = json.loads(line) if line.strip() else {}
            if row and "event" not in row:
                by_step[int(row["step"])] = row
    return [by_step[s] for s in sorted(by_step)]


@dataclass
class TrainResult:
    run_name: str
    checkpoint_dir: str
    model_weights: str
    steps: int
    seconds: float
    history: list[dict[str, float]]
    config: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpus_per_worker(workers: int) -> int:
    """Each training worker's share of the CPUs of the smallest live node (at least 1): what Ray
    reserves for it and sets its torch thread count to."""
    import ray

    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    per_node = int(min(nodes)) if nodes else 1
    total = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(per_node, total // max(1, workers)))


def fit(dataset_root: str, cfg: TrainConfig, out_dir: str, workers: int = 1, use_gpu: bool = False, run_name: str = "foil-train", address: str | None = None) -> TrainResult:
    """Train on the `train` split of `<dataset>/train/*.parquet`; checkpoints under `out_dir/run_name`."""
    import ray
    import ray.data
    import ray.train
    from ray.data.expressions import col
    from ray.train.torch import TorchTrainer

    from pipeline.core.runners import ensure_ray

    ensure_ray(address, dashboard=True)
    # The workers register foil's architectures with open_clip themselves; registering them here
    # too lets the caller load the checkpoint it gets back with open_clip by name (validating the
    # recipe no longer imports open_clip, so nothing else has registered them in this process).
    M.register_foil_configs()
    files, columns, with_images = training_inputs(dataset_root, cfg)
    # out_dir is a local folder or any URI Ray Train's storage understands (s3://, gs://, file://)
    storage = out_dir if "://" in out_dir else str(Path(out_dir).resolve())
    fs, run_dir = fsspec.core.url_to_fs(f"{storage.rstrip('/')}/{run_name}")
    fs.makedirs(run_dir, exist_ok=True)
    curve_path = f"{storage.rstrip('/')}/{run_name}/curve.jsonl"
    ray.data.DataContext.get_current().enable_progress_bars = False  # the trainer prints its own progress
    rows = shard_rows(files)
    if rows <= IN_PROCESS_MAX_ROWS and decoded_bytes(rows, cfg.model) <= DECODE_ONCE_BYTES:
        data = ray.data.from_arrow(decode_in_process(files, columns, cfg.model, cfg.batch_size))
    else:
        data = ray.data.read_parquet(files, columns=columns, ray_remote_args={"num_cpus": 0}).filter(expr=col(S.SPLIT) == "train", num_cpus=0)
        # Decoded off the training step, by actors that build their tokenizer once; their output
        # is what each worker's iterator prefetches (DECODE_AHEAD batches).
        data = data.map_batches(
            BatchDecoder, fn_constructor_args=(cfg.model,), batch_size=cfg.batch_size, batch_format="numpy",
            concurrency=max(1, workers), num_cpus=0,
        )
        if decoded_bytes(rows, cfg.model) <= DECODE_ONCE_BYTES:
            data = data.materialize()  # decoded once; each epoch then reads the blocks from the object store
    cpus = cpus_per_worker(workers)
    start = time.perf_counter()
    trainer = TorchTrainer(
        train_func,
        train_loop_config={
            "train": {**{k: v for k, v in asdict(cfg).items() if k != "extra"}, "use_negative_images": with_images},
            "use_gpu": use_gpu,
            "curve_path": curve_path,
            "cpus": cpus,
        },
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=1),
        ),
        datasets={"train": data},
    )
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"training failed: {result.error}")
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    history = read_curve(curve_path)
    ckpt_dir = result.checkpoint.path  # a path on Ray's storage filesystem: no scheme for a bucket
    if "://" in storage and not storage.startswith("file://"):
        ckpt_dir = f"{fsspec.utils.get_protocol(storage)}://{ckpt_dir.lstrip('/')}"
    return TrainResult(
        run_name=run_name,
        checkpoint_dir=ckpt_dir,
        model_weights=f"{ckpt_dir}/{CHECKPOINT_MODEL}",
        steps=int(result.metrics.get("step", cfg.steps)),
        seconds=time.perf_counter() - start,
        history=history,
        config=json.loads(json.dumps(asdict(cfg))),
    )
