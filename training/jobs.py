"""Training and evaluation as steps over a dataset: run, then record results in the catalog.

`train` runs the training (in this process for one worker with no cluster running, else a Ray
Train job) and records the run (table `runs`) and its training curve
(table `metrics`, split `train`); `evaluate` loads a checkpoint into an open_clip model and
records retrieval and hard-negative accuracy (table `metrics`, split `eval`). Each run appends
its own shard, named after the run, so several runs live side by side.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.runners import cluster_address, run_dataset_step
from pipeline.core.stage import DatasetStep
from pipeline.core.store import Dataset
from training import eval_files
from pipeline.models import factory as M
from training.eval_files import DEFAULT_TEMPLATES
from training.evaluate import evaluate as evaluate_rows
from training.local_train import fit_local
from training.ray_train import TrainConfig, TrainResult, fit


def run_id_for(cfg: TrainConfig, dataset: Dataset, name: str) -> str:
    digest = hashlib.blake2b(json.dumps([name, dataset.url, cfg.__dict__], sort_keys=True, default=str).encode(), digest_size=4)
    return f"{name}-{digest.hexdigest()}"


class RecordStep(DatasetStep):
    """One run's rows (its `runs` row, its curve, its eval metrics) as a shard named after the run:
    committed like every table, replacing an earlier record of the same run, keeping the others."""

    append = True
    inputs = (S.TRAIN,)

    def __init__(self, stage: str, table: str, shard: str, rows: pa.Table):
        super().__init__()
        self.name, self.outputs = stage, {table: rows.schema}
        self.table, self.shard, self.rows = table, shard, rows

    def compute(self, dataset: Dataset):
        self.stats.rows_out = self.rows.num_rows
        yield self.table, self.shard, self.rows


def _append(dataset: Dataset, table: str, shard: str, rows: pa.Table, stage: str) -> None:
    run_dataset_step(RecordStep(stage, table, shard, rows), dataset)


def _metric_rows(run_id: str, split: str, step: int, values: dict[str, float]) -> dict[str, list]:
    names = sorted(values)
    return {
        S.RUN_ID: [run_id] * len(names),
        S.SPLIT: [split] * len(names),
        S.STEP: [step] * len(names),
        S.NAME: names,
        S.VALUE: [float(values[n]) for n in names],
    }


def runs_in_process(workers: int, address: str | None = None) -> bool:
    """One worker and no cluster to attach to (no `address`, `RAY_ADDRESS` or live local head):
    training runs in this process (training/local_train.py). A Ray this process started for an
    earlier stage is no reason to pay for Ray Train's worker group."""
    return workers == 1 and address is None and cluster_address() is None


def train(dataset: Dataset, cfg: TrainConfig, out_dir: str, workers: int = 1, use_gpu: bool = False, name: str = "foil-train", address: str | None = None) -> tuple[str, TrainResult]:
    run_id = run_id_for(cfg, dataset, name)
    if runs_in_process(workers, address):
        result = fit_local(dataset.url, cfg, out_dir, use_gpu=use_gpu, run_name=run_id)
    else:
        result = fit(dataset.url, cfg, out_dir, workers=workers, use_gpu=use_gpu, run_name=run_id, address=address)
    curve: dict[str, list] = {c: [] for c in S.METRICS_SCHEMA.names}
    for row in result.history:
        step = int(row.get("step", 0))
        values = {k: v for k, v in row.items() if k in ("loss", "loss_image", "loss_text", "lr", "logit_scale", "samples_per_second")}
        for col, vals in _metric_rows(run_id, "train", step, values).items():
            curve[col].extend(vals)
    _append(dataset, S.METRICS, f"{run_id}-train", pa.table(curve, schema=S.METRICS_SCHEMA), "train")
    throughput = [r["samples_per_second"] for r in result.history if r.get("samples_per_second")]
    run = {
        S.RUN_ID: [run_id],
        "started_at": [dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")],
        "config": [json.dumps({**result.config, "workers": workers, "use_gpu": use_gpu})],
        "checkpoint": [result.model_weights],
        "steps": [result.steps],
        "samples_per_second": [sum(throughput) / len(throughput) if throughput else 0.0],
    }
    _append(dataset, S.RUNS, run_id, pa.table(run, schema=S.RUNS_SCHEMA), "train")
    Catalog(dataset).refresh()
    return run_id, result


@dataclass(frozen=True)
class EvalFiles:
    """Benchmarks from files (see training/eval_files.py); paths inside them are under image_root."""

    image_root: str = "."
    sugarcrepe: tuple[str, ...] = ()
    pairs: tuple[str, ...] = ()
    zeroshot: tuple[str, ...] = ()
    templates: tuple[str, ...] = DEFAULT_TEMPLATES


def evaluate(dataset: Dataset | None, checkpoint: str, model_name: str, run_id: str, files: EvalFiles | None = None, split: str = "eval") -> dict[str, float]:
    """Score `checkpoint` on the dataset's `split` rows (retrieval, hard negatives) and on any
    benchmark files; with a dataset, record the metrics there under `run_id`."""
    model = M.create_model(model_name, pretrained=checkpoint)
    metrics: dict[str, float] = {}
    if dataset is not None:
        rows = dataset.table(S.TRAIN).read(columns=[S.SAMPLE_ID, S.CAPTION, S.NEG_CAPTION, S.NEG_KIND, S.SPLIT, S.IMAGE])
        metrics.update(evaluate_rows(model, model_name, rows.filter(pc.equal(rows[S.SPLIT], split))))
    files = files or EvalFiles()
    root = Path(files.image_root)
    for path in files.sugarcrepe:
        metrics.update(eval_files.sugarcrepe(model, model_name, Path(path), root))
    if files.pairs:  # either pairs format; `pairs:<file>:<metric>`, per kind too
        from training import pairs

        metrics.update(pairs.evaluate_files(pairs.ModelEmbedder(model, model_name), list(files.pairs), [], str(root)))
    for path in files.zeroshot:
        metrics.update(eval_files.zero_shot(model, model_name, Path(path), root, files.templates))
    if dataset is not None:
        table = pa.table(_metric_rows(run_id, "eval", 0, metrics), schema=S.METRICS_SCHEMA)
        _append(dataset, S.METRICS, f"{run_id}-eval", table, "eval")
        Catalog(dataset).refresh()
    return metrics

