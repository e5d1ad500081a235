"""Prefect flows: one per stage, and `end_to_end`, which chains them.

Flows only wire: every step is a plain function in pipeline/ or training/. Tasks retry on
failure (a step raises only when shards still fail after the runner's own per-shard retries),
and each flow publishes its counts as a Prefect table artifact. Locally a flow runs without a
Prefect server (Prefect starts a temporary one in-process); deployments are in prefect.yaml.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pipeline import steps
from flows.recipe import Recipe, load_recipe
from pipeline.report import build_summary, render_markdown, write_summary
from pipeline.core.store import Dataset
from training import jobs
from training.ray_train import TrainConfig


def _recipe(recipe_path: str | None) -> Recipe:
    return load_recipe(recipe_path)


def _with_allowed(recipe: Recipe, allow_addresses: list[str] | None) -> Recipe:
    """Add addresses the crawl may reach although private (a local server the caller started)."""
    if allow_addresses:
        known = list(recipe.crawl_params.get("allow_addresses") or [])
        recipe.crawl_params = {**recipe.crawl_params, "allow_addresses": known + [a for a in allow_addresses if a not in known]}
        from pipeline.stages import build_stage

        build_stage("crawl", recipe.crawl_params)  # a bad address fails here, before any work
    return recipe


def _publish(key: str, report: dict[str, Any]) -> None:
    stats = report.get("stats", {})
    rows = [{"what": "rows_in", "count": stats.get("rows_in", 0)}, {"what": "rows_out", "count": stats.get("rows_out", 0)}]
    rows += [{"what": f"dropped:{k}", "count": v} for k, v in sorted(stats.get("dropped", {}).items())]
    rows += [{"what": k, "count": v} for k, v in sorted(stats.get("counts", {}).items())]
    rows += [{"what": "shards_failed", "count": report.get("shards_failed", 0)}]
    create_table_artifact(key=key, table=rows, description=f"foil {key}: kept, dropped and why")


@task(name="crawl", retries=1, retry_delay_seconds=2)
def crawl_task(
    dataset: str, url_files: list[str], recipe: Recipe, overwrite: bool = False, keep_columns: str | list[str] = (), retry_failed: bool = False,
) -> dict[str, Any]:
    report = steps.crawl(
        Dataset(dataset), url_files, recipe.crawl_params, recipe.runner(), overwrite=overwrite, keep_columns=keep_columns,
        retry_failed=retry_failed, **recipe.ingest,
    )
    _publish("crawl", report)
    return report


@task(name="score", retries=1, retry_delay_seconds=2)
def score_task(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    report = steps.score(Dataset(dataset), recipe.runner(), overwrite=overwrite)
    _publish("score", report)
    return report


@task(name="embed", retries=1, retry_delay_seconds=2)
def embed_task(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    report = steps.embed(Dataset(dataset), recipe.embed or {}, recipe.runner(), overwrite=overwrite)
    _publish("embed", report)
    return report


@task(name="dedup")
def dedup_task(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    report = steps.dedup(Dataset(dataset), recipe.dedup, overwrite=overwrite)
    create_table_artifact(key="dedup", table=[{"what": k, "count": v} for k, v in report.items()], description="duplicates found, by kind")
    return report


@task(name="curate")
def curate_task(dataset: str, recipe: Recipe) -> list[dict[str, Any]]:
    funnel = steps.curate(Dataset(dataset), recipe.curate)
    create_table_artifact(key="funnel", table=funnel, description="rows removed per reason, in order")
    return funnel


@task(name="negatives", retries=1, retry_delay_seconds=2)
def negatives_task(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    report = steps.negatives(Dataset(dataset), recipe.negatives, recipe.runner(), overwrite=overwrite, knn=recipe.negatives_knn)
    _publish("negatives", report)
    return report


@task(name="export", retries=1, retry_delay_seconds=2)
def export_task(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    report = steps.export(Dataset(dataset), recipe.export, recipe.runner(), overwrite=overwrite, webdataset=recipe.export_webdataset)
    _publish("export", report)
    return report


@task(name="train")
def train_task(dataset: str, recipe: Recipe, out_dir: str, use_gpu: bool = False) -> dict[str, Any]:
    cfg = TrainConfig.from_dict(recipe.train)
    run_id, result = jobs.train(Dataset(dataset), cfg, out_dir, workers=recipe.train_workers, use_gpu=use_gpu, address=recipe.runner_address)
    return {"run_id": run_id, "model": cfg.model, "checkpoint": result.model_weights, "steps": result.steps, "seconds": result.seconds}


@task(name="eval")
def eval_task(dataset: str | None, checkpoint: str, model: str, run_id: str, files: jobs.EvalFiles | None = None) -> dict[str, float]:
    metrics = jobs.evaluate(Dataset(dataset) if dataset else None, checkpoint, model, run_id, files)
    create_table_artifact(key="eval", table=[{"metric": k, "value": round(v, 4)} for k, v in metrics.items()])
    return metrics


@flow(name="crawl")
def crawl_flow(
    dataset: str, url_files: list[str], recipe_path: str | None = None, overwrite: bool = False,
    url_col: str | None = None, caption_col: str | None = None, allow_private_addresses: bool = False,
    allow_addresses: list[str] | None = None, keep_columns: str | list[str] = (), retry_failed: bool = False,
) -> dict[str, Any]:
    """Add the lists' urls not seen before to the dataset and crawl them (finished shards are
    kept); `retry_failed` re-fetches the transient failures of `raw` instead (no url lists then).
    `keep_columns` carries more list columns into raw. `allow_addresses` (ADDRESS:PORT) lets a
    crawl reach these loopback/private servers only; `allow_private_addresses` lets it reach all
    of them (local testing)."""
    recipe = _with_allowed(_recipe(recipe_path), allow_addresses)
    if allow_private_addresses:
        recipe.crawl_params = {**recipe.crawl_params, "allow_private_addresses": True}
    recipe.url_col = url_col or recipe.url_col
    recipe.caption_col = caption_col or recipe.caption_col
    return crawl_task(dataset, url_files, recipe, overwrite, keep_columns, retry_failed)


@flow(name="score")
def score_flow(dataset: str, recipe_path: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    return score_task(dataset, _recipe(recipe_path), overwrite)


@flow(name="embed")
def embed_flow(dataset: str, recipe_path: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    return embed_task(dataset, _recipe(recipe_path), overwrite)


@flow(name="dedup")
def dedup_flow(dataset: str, recipe_path: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    return dedup_task(dataset, _recipe(recipe_path), overwrite)


@flow(name="curate")
def curate_flow(dataset: str, recipe_path: str | None = None) -> list[dict[str, Any]]:
    return curate_task(dataset, _recipe(recipe_path))


@flow(name="negatives")
def negatives_flow(dataset: str, recipe_path: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    return negatives_task(dataset, _recipe(recipe_path), overwrite)


@flow(name="export")
def export_flow(dataset: str, recipe_path: str | None = None, overwrite: bool = False, webdataset: bool = False) -> dict[str, Any]:
    recipe = _recipe(recipe_path)
    recipe.export_webdataset = recipe.export_webdataset or webdataset
    return export_task(dataset, recipe, overwrite)


@flow(name="train")
def train_flow(dataset: str, out_dir: str, recipe_path: str | None = None, use_gpu: bool = False, workers: int | None = None) -> dict[str, Any]:
    recipe = _recipe(recipe_path)
    recipe.train_workers = workers or recipe.train_workers
    return train_task(dataset, recipe, out_dir, use_gpu)


@flow(name="eval")
def eval_flow(dataset: str | None, checkpoint: str, model: str, run_id: str, files: jobs.EvalFiles | None = None) -> dict[str, float]:
    return eval_task(dataset, checkpoint, model, run_id, files)


@flow(name="end-to-end")
def end_to_end(
    dataset: str, url_files: list[str], recipe_path: str | None = None, use_gpu: bool = False, allow_addresses: list[str] | None = None,
) -> dict[str, Any]:
    """crawl -> score -> [embed] -> dedup -> curate -> negatives -> export -> train -> eval -> summary.
    `allow_addresses` (ADDRESS:PORT): private servers the crawl may reach (the demo's own)."""
    recipe = _with_allowed(_recipe(recipe_path), allow_addresses)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args)
        timings[name] = time.perf_counter() - start
        return out

    crawl = timed("crawl", crawl_task, dataset, url_files, recipe)
    timed("score", score_task, dataset, recipe)
    if recipe.embed is not None:
        timed("embed", embed_task, dataset, recipe)
    timed("dedup", dedup_task, dataset, recipe)
    timed("curate", curate_task, dataset, recipe)
    timed("negatives", negatives_task, dataset, recipe)
    timed("export", export_task, dataset, recipe)
    trained = timed("train", train_task, dataset, recipe, str(Path(dataset) / "checkpoints"), use_gpu)
    metrics = timed("eval", eval_task, dataset, trained["checkpoint"], trained["model"], trained["run_id"])
    summary = build_summary(
        Dataset(dataset),
        timings,
        extra={
            "crawl_rate": {
                "rows_crawled_now": crawl["crawled_rows"],
                "images_per_second": round(crawl["images_per_second"] or 0, 1),
                "success_rate": round(crawl["success_rate"] or 0, 4),
            },
            "checkpoint": trained["checkpoint"],
            "run_id": trained["run_id"],
            "metrics": {k: round(v, 4) for k, v in metrics.items()},
        },
    )
    write_summary(Dataset(dataset), summary)
    create_markdown_artifact(key="summary", markdown=render_markdown(summary))
    return summary
