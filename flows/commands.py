"""What each `foil` command runs when Prefect tracking is not asked for: the steps, called plainly.

A Prefect flow run outside a server costs Prefect's import and a temporary API server (seconds,
before any work starts) and tracks nothing anyone looks at afterwards. So by default the CLI
calls these functions, and the Prefect tasks in pipeline_flows.py wrap the very same functions
(adding retries, artifacts and run tracking) for deployments, for `--prefect` and for a
configured Prefect server (`PREFECT_API_URL`): one body per stage, two ways to call it.

Each stage has two functions: `run_<stage>` takes a parsed Recipe (what the Prefect tasks and
the end-to-end flow pass along), `<stage>` takes the recipe's path, with the same parameters
as the stage's Prefect flow, so the CLI calls either with one argument list (`COMMANDS` and
`pipeline_flows.FLOWS` share their keys). Nothing here imports Prefect, and torch is imported
only by the commands that run a model (train, eval).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from flows.recipe import Recipe, load_recipe
from pipeline import steps
from pipeline.core.store import Dataset

if TYPE_CHECKING:
    from training.jobs import EvalFiles


def with_allowed(recipe: Recipe, allow_addresses: list[str] | None) -> Recipe:
    """Add addresses the crawl may reach although private (a local server the caller started)."""
    if allow_addresses:
        known = list(recipe.crawl_params.get("allow_addresses") or [])
        recipe.crawl_params = {**recipe.crawl_params, "allow_addresses": known + [a for a in allow_addresses if a not in known]}
        from pipeline.stages import build_stage

        build_stage("crawl", recipe.crawl_params)  # a bad address fails here, before any work
    return recipe


def crawl_recipe(
    recipe_path: str | None, url_col: str | None = None, caption_col: str | None = None,
    allow_private_addresses: bool = False, allow_addresses: list[str] | None = None,
) -> Recipe:
    """The recipe with the crawl command's own options applied on top."""
    recipe = with_allowed(load_recipe(recipe_path), allow_addresses)
    if allow_private_addresses:
        recipe.crawl_params = {**recipe.crawl_params, "allow_private_addresses": True}
    recipe.url_col = url_col or recipe.url_col
    recipe.caption_col = caption_col or recipe.caption_col
    return recipe


# -- one body per stage, over a parsed recipe -------------------------------------------------
def run_crawl(
    dataset: str, url_files: list[str], recipe: Recipe, overwrite: bool = False, keep_columns: str | list[str] = (), retry_failed: bool = False,
) -> dict[str, Any]:
    return steps.crawl(
        Dataset(dataset), url_files, recipe.crawl_params, recipe.runner(), overwrite=overwrite, keep_columns=keep_columns,
        retry_failed=retry_failed, **recipe.ingest,
    )


def run_score(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    return steps.score(Dataset(dataset), recipe.runner(), overwrite=overwrite)


def run_embed(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    return steps.embed(Dataset(dataset), recipe.embed or {}, recipe.runner(), overwrite=overwrite)


def run_dedup(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    return steps.dedup(Dataset(dataset), recipe.dedup, overwrite=overwrite)


def run_curate(dataset: str, recipe: Recipe) -> list[dict[str, Any]]:
    return steps.curate(Dataset(dataset), recipe.curate)


def run_negatives(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    return steps.negatives(Dataset(dataset), recipe.negatives, recipe.runner(), overwrite=overwrite, knn=recipe.negatives_knn, blind=recipe.negatives_blind)


def run_export(dataset: str, recipe: Recipe, overwrite: bool = False) -> dict[str, Any]:
    return steps.export(Dataset(dataset), recipe.export, recipe.runner(), overwrite=overwrite, webdataset=recipe.export_webdataset)


def run_train(dataset: str, recipe: Recipe, out_dir: str, use_gpu: bool = False) -> dict[str, Any]:
    from training import jobs
    from training.config import TrainConfig

    cfg = TrainConfig.from_dict(recipe.train)
    run_id, result = jobs.train(Dataset(dataset), cfg, out_dir, workers=recipe.train_workers, use_gpu=use_gpu, address=recipe.runner_address)
    return {"run_id": run_id, "model": cfg.model, "checkpoint": result.model_weights, "steps": result.steps, "seconds": result.seconds}


def run_eval(dataset: str | None, checkpoint: str, model: str, run_id: str, files: EvalFiles | None = None) -> dict[str, float]:
    from training import jobs

    return jobs.evaluate(Dataset(dataset) if dataset else None, checkpoint, model, run_id, files)


# -- the same, from a recipe path: the parameters of the stages' Prefect flows -----------------
def crawl(
    dataset: str, url_files: list[str], recipe_path: str | None = None, overwrite: bool = False,
    url_col: str | None = None, caption_col: str | None = None, allow_private_addresses: bool = False,
    allow_addresses: list[str] | None = None, keep_columns: str | list[str] = (), retry_failed: bool = False,
) -> dict[str, Any]:
    recipe = crawl_recipe(recipe_path, url_col, caption_col, allow_private_addresses, allow_addresses)
    return run_crawl(dataset, url_files, recipe, overwrite, keep_columns, retry_failed)


def score(dataset: str, recipe_path: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    return run_score(dataset, load_recipe(recipe_path), overwrite)


def embed(dataset: str, recipe_path: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    return run_embed(dataset, load_recipe(recipe_path), overwrite)


def dedup(dataset: str, recipe_path: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    return run_dedup(dataset, load_recipe(recipe_path), overwrite)


def curate(dataset: str, recipe_path: str | None = None) -> list[dict[str, Any]]:
    return run_curate(dataset, load_recipe(recipe_path))


def negatives(dataset: str, recipe_path: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    return run_negatives(dataset, load_recipe(recipe_path), overwrite)


def export(dataset: str, recipe_path: str | None = None, overwrite: bool = False, webdataset: bool = False) -> dict[str, Any]:
    recipe = load_recipe(recipe_path)
    recipe.export_webdataset = recipe.export_webdataset or webdataset
    return run_export(dataset, recipe, overwrite)


def train(dataset: str, out_dir: str, recipe_path: str | None = None, use_gpu: bool = False, workers: int | None = None) -> dict[str, Any]:
    recipe = load_recipe(recipe_path)
    recipe.train_workers = workers or recipe.train_workers
    return run_train(dataset, recipe, out_dir, use_gpu)


def evaluate(dataset: str | None, checkpoint: str, model: str, run_id: str, files: EvalFiles | None = None) -> dict[str, float]:
    return run_eval(dataset, checkpoint, model, run_id, files)


COMMANDS: dict[str, Callable[..., Any]] = {
    "crawl": crawl, "score": score, "embed": embed, "dedup": dedup, "curate": curate,
    "negatives": negatives, "export": export, "train": train, "eval": evaluate,
}
