"""Prefect flows: one per stage, and `end_to_end`, which chains them.

Flows only wire: every task is the plain step of flows/commands.py (what `foil <stage>` runs
without Prefect). Tasks retry on failure (a step raises only when shards still fail after the
runner's own per-shard retries), and each flow publishes its counts as a Prefect table artifact.
The CLI runs these flows only when Prefect tracking is asked for (`--prefect`, or
`PREFECT_API_URL` set); without a server Prefect starts a temporary one in-process, which costs
seconds. Deployments are in prefect.yaml.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import commands as C
from flows.recipe import Recipe, load_recipe
from pipeline.report import build_summary, render_markdown, write_summary
from pipeline.core.store import Dataset
from training import jobs


def _recipe(recipe_path: str | None) -> Recipe:
    return load_recipe(recipe_path)


_with_allowed = C.with_allowed


def _publish(key: str, report: dict[str, Any]) -> None:
    stats = report.get("stats", {})
    rows = [{"what": "rows_in", "count": stats.get("rows_in", 0)}, {"what": "rows_out", "count": stats.get("rows_out", 0)}]
    rows += [{"what": f"dropped:{k}", "count": v} for k, v in sorted(stats.get("dropped", {}).items())]
    rows += [{"what": k, "count": v} for k, v in sorted(stats.get("counts", {}).items())]
    rows += [{"what": "shards_failed", "count": report.get("shards_failed", 0)}]
    create_table_artifact(key=key, table=rows, description=f"foil {key}: kept, dropped and why")


@task(name="report")
def report_task(dataset: str) -> str | None:
    """Write <dataset>/report.html (`foil report`) and link it as the flow run's `report`
    artifact. The stage's result stands if the page cannot be made (no catalog yet, say): the
    reason is logged and published in the artifact's place."""
    from prefect import get_run_logger
    from prefect.artifacts import create_link_artifact

    from pipeline.report_html import write_report

    try:
        result = write_report(Dataset(dataset))
    except Exception as exc:  # the report is a view of the stage's output, not part of it
        get_run_logger().warning(f"report.html not written: {type(exc).__name__}: {exc}")
        create_markdown_artifact(key="report", markdown=f"report.html not written: `{type(exc).__name__}: {exc}`")
        return None
    link = Path(result.path).as_uri() if "://" not in result.path else result.path
    create_link_artifact(key="report", link=link, link_text="foil report", description=f"{result.images} images and plots, {result.bytes / 1e6:.1f} MB")
    return result.path


def _linked(dataset: str | None, result: Any) -> Any:
    """A stage flow's result, after refreshing the dataset's report and linking it."""
    if dataset:
        report_task(dataset)
    return result


# Each task is the plain step of flows/commands.py plus Prefect's retries and artifacts.
@task(name="crawl", retries=1, retry_delay_seconds=2)
def crawl_task(
    dataset: str, url_files: list[str], recipe: Recipe, overwrite: bool = False, keep_columns: str | list[str] = (), retry_failed: bool = False,
) -> dict[str, Any]:
    report = C.run_crawl(dataset, url_files, recipe, overwrite, keep_columns, retry_failed)
    _publish("crawl", report)
    return report


@task(name="score", retries=1, retry_delay_seconds=2)
def score_task(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    report = C.run_score(dataset, recipe, overwrite)
    _publish("score", report)
    return report


@task(name="embed", retries=1, retry_delay_seconds=2)
def embed_task(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    report = C.run_embed(dataset, recipe, overwrite)
    _publish("embed", report)
    return report


@task(name="dedup")
def dedup_task(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    report = C.run_dedup(dataset, recipe, overwrite)
    create_table_artifact(key="dedup", table=[{"what": k, "count": v} for k, v in report.items()], description="duplicates found, by kind")
    return report


@task(name="curate")
def curate_task(dataset: str, recipe: Recipe) -> list[dict[str, Any]]:
    funnel = C.run_curate(dataset, recipe)
    create_table_artifact(key="funnel", table=funnel, description="rows removed per reason, in order")
    return funnel


@task(name="negatives", retries=1, retry_delay_seconds=2)
def negatives_task(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    report = C.run_negatives(dataset, recipe, overwrite)
    _publish("negatives", report)
    return report


@task(name="export", retries=1, retry_delay_seconds=2)
def export_task(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    report = C.run_export(dataset, recipe, overwrite)
    _publish("export", report)
    return report


@task(name="train")
def train_task(dataset: str, recipe: Recipe, out_dir: str, use_gpu: bool = False) -> dict[str, Any]:
    return C.run_train(dataset, recipe, out_dir, use_gpu)


@task(name="eval")
def eval_task(dataset: str | None, checkpoint: str, model: str, run_id: str, files: jobs.EvalFiles | None = None) -> dict[str, float]:
    metrics = C.run_eval(dataset, checkpoint, model, run_id, files)
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
    recipe = C.crawl_recipe(recipe_path, url_col, caption_col, allow_private_addresses, allow_addresses)
    return _linked(dataset, crawl_task(dataset, url_files, recipe, overwrite, keep_columns, retry_failed))


@flow(name="score")
def score_flow(dataset: str, recipe_path: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    return _linked(dataset, score_task(dataset, _recipe(recipe_path), overwrite))


@flow(name="embed")
def embed_flow(dataset: str, recipe_path: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    return _linked(dataset, embed_task(dataset, _recipe(recipe_path), overwrite))


@flow(name="dedup")
def dedup_flow(dataset: str, recipe_path: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    return _linked(dataset, dedup_task(dataset, _recipe(recipe_path), overwrite))


@flow(name="curate")
def curate_flow(dataset: str, recipe_path: str | None = None) -> list[dict[str, Any]]:
    return _linked(dataset, curate_task(dataset, _recipe(recipe_path)))


@flow(name="negatives")
def negatives_flow(dataset: str, recipe_path: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    return _linked(dataset, negatives_task(dataset, _recipe(recipe_path), overwrite))


@flow(name="export")
def export_flow(dataset: str, recipe_path: str | None = None, overwrite: bool = False, webdataset: bool = False) -> dict[str, Any]:
    recipe = _recipe(recipe_path)
    recipe.export_webdataset = recipe.export_webdataset or webdataset
    return _linked(dataset, export_task(dataset, recipe, overwrite))


@flow(name="train")
def train_flow(dataset: str, out_dir: str, recipe_path: str | None = None, use_gpu: bool = False, workers: int | None = None) -> dict[str, Any]:
    recipe = _recipe(recipe_path)
    recipe.train_workers = workers or recipe.train_workers
    return _linked(dataset, train_task(dataset, recipe, out_dir, use_gpu))


@flow(name="eval")
def eval_flow(dataset: str | None, checkpoint: str, model: str, run_id: str, files: jobs.EvalFiles | None = None) -> dict[str, float]:
    return _linked(dataset, eval_task(dataset, checkpoint, model, run_id, files))


# The flows by command name: the keys and parameters of flows.commands.COMMANDS, so the CLI runs
# either with the same arguments (`foil <stage> --prefect`).
FLOWS = {
    "crawl": crawl_flow, "score": score_flow, "embed": embed_flow, "dedup": dedup_flow, "curate": curate_flow,
    "negatives": negatives_flow, "export": export_flow, "train": train_flow, "eval": eval_flow,
}


# -- the steps only the end-to-end flow runs ---------------------------------------------------
HEADS_DIR = "heads"  # <dataset>/heads/heads-<config hash>.pt: the filter model the flow trains and embeds with


@task(name="train-heads")
def train_heads_task(dataset: str, recipe: Recipe) -> dict[str, Any]:
    """The dataset's own filter model: `foil train-heads` on the rows that pass the rule
    thresholds (the CLIP-score ones need this very model). A finished checkpoint of the same
    config is reused, so a rerun embeds with the same weights and its embed shards resume; its
    file name holds the config's hash, so a changed heads section is a changed embed config.
    """
    import hashlib
    import json
    import os
    from dataclasses import asdict

    import pyarrow.compute as pc

    from pipeline.core import schema as S
    from pipeline.core.catalog import Catalog
    from training.heads import HeadsConfig, train_heads

    ds = Dataset(dataset)
    settings = dict(recipe.heads or {})
    max_rows = settings.pop("max_rows", None)
    cfg = HeadsConfig(**settings)
    digest = hashlib.blake2b(json.dumps([asdict(cfg), max_rows], sort_keys=True).encode(), digest_size=4).hexdigest()
    target = Path(ds.path(HEADS_DIR, f"heads-{digest}.pt"))
    if target.exists():
        return {"checkpoint": str(target), "model": cfg.model, "reused": True}
    # a stable sample (by the hash that sample ids are) when capped: the same rows on every rerun
    limit = f" ORDER BY {S.SAMPLE_ID} LIMIT {int(max_rows)}" if max_rows else ""
    curated = Catalog(ds).query(f"SELECT {S.SAMPLE_ID} FROM curated{limit}")[S.SAMPLE_ID]
    raw = ds.table(S.RAW).read(columns=[S.SAMPLE_ID, S.CAPTION, S.IMAGE])
    rows = raw.filter(pc.is_in(raw[S.SAMPLE_ID], value_set=curated))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    report = train_heads(rows, cfg, tmp, progress=lambda line: print(f"[foil train-heads] {line}", flush=True))
    os.replace(tmp, target)  # a killed run leaves no half-written checkpoint to reuse
    create_table_artifact(key="train-heads", table=[{"what": k, "value": str(v)} for k, v in report.items()])
    return {**report, "checkpoint": str(target)}


@task(name="index")
def index_task(dataset: str) -> dict[str, Any]:
    """`foil index`: the curated embeddings in clip-retrieval's layout, indexed by autofaiss (kNN
    mining then searches it)."""
    from pipeline.embed.knn_index import build

    return build(Dataset(dataset), curated_only=True)


@task(name="neg-image", retries=1, retry_delay_seconds=2)
def neg_image_task(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    from pipeline import steps

    report = steps.neg_image(Dataset(dataset), recipe.neg_image, recipe.runner(), overwrite=overwrite)
    _publish("neg-image", report)
    return report


IMGDIFF_HELDOUT_DIR = "imgdiff_heldout"  # <dataset>/imgdiff_heldout/: the eval split's kept pairs, for `foil eval --pairs`


@task(name="imgdiff", retries=1, retry_delay_seconds=2)
def imgdiff_task(dataset: str, recipe: Recipe, pairs: list[str] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """`foil imgdiff import` (when given a pairs file and its image folder), then `foil imgdiff`:
    the recipe's generated pairs and the imported ones through the filter, the Difference Area
    Generator and the captions."""
    from pipeline import steps

    ds = Dataset(dataset)
    if pairs:
        steps.imgdiff_import(ds, pairs[0], pairs[1], overwrite=overwrite)
    report = steps.imgdiff(ds, recipe.imgdiff, recipe.runner(), generate=recipe.imgdiff_generate, overwrite=overwrite)
    _publish("imgdiff", report)
    return report


def _heldout_pairs(dataset: str, recipe: Recipe) -> jobs.EvalFiles | None:
    """The kept Img-Diff pairs of the eval split as a pairs file (`foil imgdiff export-pairs`),
    so eval reports Winoground's text, image and group scores on pairs training never saw."""
    from pipeline.imgdiff.pairs import export_pairs

    folder = Path(dataset) / IMGDIFF_HELDOUT_DIR
    pairs = folder / "pairs.jsonl"
    if not export_pairs(Dataset(dataset), pairs, folder / "images", recipe.export.get("eval_percent", 10)):
        return None
    return jobs.EvalFiles(image_root=str(folder / "images"), pairs=(str(pairs),))


@flow(name="end-to-end")
def end_to_end(
    dataset: str, url_files: list[str], recipe_path: str | None = None, use_gpu: bool = False, allow_addresses: list[str] | None = None,
    imgdiff_pairs: list[str] | None = None,
) -> dict[str, Any]:
    """crawl -> score -> [train-heads -> embed] -> dedup -> curate -> [index] -> negatives ->
    [neg-image] -> [imgdiff] -> export -> train -> eval -> summary.

    With a `heads` section, the flow trains its own filter model on the rows that pass the rule
    thresholds and embeds with it (so curation's CLIP score, semantic dedup, the kNN index and
    kNN negatives all run); with an `embed` section, it embeds with that model. With a
    `neg_image` section, image negatives are made before export (mined ones are trained on;
    those of a random-weight pipeline are flagged and never exported). With `imgdiff_pairs`
    ([pairs file, image folder]) or an `imgdiff.generate` section, Img-Diff pairs are imported
    and/or generated and analysed before export (kept trainable pairs export as two rows that are
    each other's negatives), and eval adds Winoground scores on the eval split's pairs.
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
    heads = None
    if recipe.heads is not None:
        from dataclasses import replace

        # the filter model's rows: those passing the rules (the CLIP-score thresholds need it)
        rules_only = replace(recipe, curate={**recipe.curate, "min_clip_score": -1.0, "clip_score_top_fraction": 1.0})
        timed("curate_rules", curate_task, dataset, rules_only)
        heads = timed("train_heads", train_heads_task, dataset, recipe)
        recipe.embed = {**(recipe.embed or {}), "model": heads["model"], "pretrained": heads["checkpoint"]}
    embedded = recipe.embed is not None
    if embedded:
        timed("embed", embed_task, dataset, recipe)
    timed("dedup", dedup_task, dataset, recipe)
    timed("curate", curate_task, dataset, recipe)
    if embedded:
        timed("index", index_task, dataset)
    timed("negatives", negatives_task, dataset, recipe)
    if embedded and recipe.neg_image:
        timed("neg_image", neg_image_task, dataset, recipe)
    imgdiff = imgdiff_pairs or recipe.imgdiff_generate is not None
    if imgdiff:
        timed("imgdiff", imgdiff_task, dataset, recipe, imgdiff_pairs)
    timed("export", export_task, dataset, recipe)
    trained = timed("train", train_task, dataset, recipe, str(Path(dataset) / "checkpoints"), use_gpu)
    files = _heldout_pairs(dataset, recipe) if imgdiff else None
    metrics = timed("eval", eval_task, dataset, trained["checkpoint"], trained["model"], trained["run_id"], files)
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
            "filter_model": heads,
            "metrics": {k: round(v, 4) for k, v in metrics.items()},
        },
    )
    summary["report"] = report_task(dataset)  # <dataset>/report.html, linked as an artifact
    write_summary(Dataset(dataset), summary)
    create_markdown_artifact(key="summary", markdown=render_markdown(summary))
    return summary
