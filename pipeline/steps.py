"""The data steps as plain functions: what `foil <stage>` and the Prefect flows both call.

Each step runs one stage over a dataset with a runner, refreshes the catalog so its output is
queryable at once, and returns a report of counts (kept, dropped and why, shard statuses).
"""

from __future__ import annotations

from typing import Any

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.crawl import CrawlStage
from pipeline.curate import ScoreStage
from pipeline.embed import EmbedStage
from pipeline.export import ExportStage
from pipeline.negatives import TextNegativesStage
from pipeline.curate.dedup import DedupConfig
from pipeline.curate.dedup import dedup as find_duplicates
from pipeline.export.export import write_webdataset
from pipeline.negatives.knn import mine as mine_knn
from pipeline.core.runners import LocalRunner, RayRunner, RunReport
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset
from pipeline.crawl.urls import ingest_urls


class StepFailed(RuntimeError):
    """Some shards still failed after all retries; the report says which and why."""

    def __init__(self, report: RunReport):
        self.report = report
        first = report.failed[0]
        super().__init__(
            f"{report.stage}: {len(report.failed)} of {report.shards_total} shards failed after retries "
            f"(first: {first.shard}: {(first.error or '').splitlines()[0]})"
        )


def _finish(dataset: Dataset, report: RunReport) -> dict[str, Any]:
    Catalog(dataset).refresh()
    if report.failed:
        raise StepFailed(report)
    return report.as_dict()


def crawl(
    dataset: Dataset,
    url_files: list[str],
    params: dict[str, Any],
    runner: LocalRunner | RayRunner,
    url_col: str = "url",
    caption_col: str | None = "caption",
    shard_rows: int = 1000,
    overwrite: bool = False,
    keep_columns: tuple[str, ...] | list[str] | str = (),
    retry_failed: bool = False,
    shard_by_host: bool = False,
) -> dict[str, Any]:
    """Add url lists to table `urls` (only urls not seen before, as new shards), then crawl the
    shards not crawled yet into `raw` (crawl stage `params`). The report's `refused` counts the
    rows refused on purpose by this call, by status.

    `retry_failed` instead re-fetches the rows of the existing `raw` whose failure is transient,
    in place (pipeline/crawl/retry.py); `url_files` are not read then."""
    from pipeline.crawl.crawl import REFUSED_STATUSES
    from pipeline.crawl.retry import retry_failed as retry

    if retry_failed:
        if url_files:
            raise ConfigError("--retry-failed re-fetches the rows of the existing raw table: give no url lists with it")
        result = retry(dataset, params)
        Catalog(dataset).refresh()
        return {"stage": "crawl", "retry_failed": vars(result), "recovered": result.recovered, "rows_retried": result.rows_retried}
    ingest = ingest_urls(
        dataset, url_files, url_col=url_col, caption_col=caption_col, shard_rows=shard_rows, overwrite=overwrite, keep_columns=keep_columns,
        shard_by_host=shard_by_host,
    )
    report = runner.run(CrawlStage, params, dataset, S.URLS, S.RAW, overwrite=overwrite)
    out = _finish(dataset, report)
    out["ingest"] = vars(ingest)
    # Rates cover the shards crawled by this call only; resumed shards were done earlier.
    ok = total = 0
    refused = dict.fromkeys(REFUSED_STATUSES, 0)
    for result in report.results:
        counts = result.stats.get("counts", {})
        ok += counts.get(f"status:{S.STATUS_SUCCESS}", 0)
        total += result.stats.get("rows_in", 0)  # the crawl stage gives every input row a status
        for status in REFUSED_STATUSES:
            refused[status] += counts.get(f"status:{status}", 0)
    out["refused"] = {status: n for status, n in refused.items() if n}
    out["crawled_rows"] = total
    out["success_rate"] = ok / total if total else None
    out["images_per_second"] = ok / report.seconds if total else None
    return out


def score(dataset: Dataset, runner: LocalRunner | RayRunner, overwrite: bool = False) -> dict[str, Any]:
    return _finish(dataset, runner.run(ScoreStage, {}, dataset, S.RAW, S.SCORES, overwrite=overwrite))


def embed(dataset: Dataset, params: dict[str, Any], runner: LocalRunner | RayRunner, overwrite: bool = False) -> dict[str, Any]:
    """Image/text embeddings and CLIP scores of every crawled image (table `embeddings`)."""
    return _finish(dataset, runner.run(EmbedStage, params, dataset, S.RAW, S.EMBEDDINGS, overwrite=overwrite))


def dedup(dataset: Dataset, params: dict[str, Any], overwrite: bool = False) -> dict[str, Any]:
    """Exact, near and (with embeddings) semantic duplicates into table `duplicates`."""
    report = find_duplicates(dataset, DedupConfig.from_dict(params), overwrite=overwrite)
    Catalog(dataset).refresh()
    return report


def curate(dataset: Dataset, thresholds: dict[str, Any]) -> list[dict[str, Any]]:
    """Set the thresholds and recreate the views; nothing is recomputed. Returns the funnel."""
    catalog = Catalog(dataset)
    catalog.set_thresholds(thresholds)
    catalog.refresh()
    return catalog.query("SELECT * FROM funnel").to_pylist()


def negatives(
    dataset: Dataset, params: dict[str, Any], runner: LocalRunner | RayRunner, overwrite: bool = False,
    knn: dict[str, Any] | None = None, blind: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generated negatives into `neg_text`; with `knn` ({max_cosine, k}), also kNN-mined ones
    into `neg_knn` (needs embeddings); with `blind` ({max_accuracy, folds, rounds, seed}), the
    blind scores of neg_text's pairs and the refinement's decisions into `neg_blind`."""
    if knn is not None and not dataset.table(S.EMBEDDINGS).exists():  # say so before, not after, the long part
        raise ConfigError(f"negatives.knn needs embeddings: run `foil embed --dataset {dataset.url}` first, or drop negatives.knn")
    # Reads the curated view shard by shard (its `shard` column is the raw shard), so only
    # curated captions get negatives, and a rerun after a threshold change needs --overwrite.
    report = runner.run(TextNegativesStage, params, dataset, S.RAW, S.NEG_TEXT, input_view="curated", overwrite=overwrite)
    out = _finish(dataset, report)
    if knn is not None:
        out["knn"] = mine_knn(dataset, **knn, overwrite=overwrite)
    if blind is not None:
        out["blind"] = blind_refine(dataset, blind, overwrite=overwrite)
    return out


def blind_refine(dataset: Dataset, params: dict[str, Any], overwrite: bool = False, progress: bool = False) -> dict[str, Any]:
    """Blind (text-only) scores of every neg_text pair and the adversarial refinement into
    `neg_blind`; the `negatives` view then keeps only what the refinement kept."""
    from pipeline.core.runners import run_dataset_step
    from pipeline.negatives.blind import BlindRefineStep

    if not dataset.table(S.NEG_TEXT).exists():
        raise ConfigError(f"blind refinement needs text negatives: run `foil negatives --dataset {dataset.url}` first")
    report = run_dataset_step(BlindRefineStep(**params, progress=progress), dataset, overwrite=overwrite)
    Catalog(dataset).refresh()
    return dict(report.stats)


def export(dataset: Dataset, params: dict[str, Any], runner: LocalRunner | RayRunner, overwrite: bool = False, webdataset: bool = False) -> dict[str, Any]:
    """Table `train` from the `export_rows` view; negative images and Img-Diff pairs are read
    from the dataset's `neg_image` and `imgdiff` shards that the view names."""
    if "dataset" in params:
        raise ConfigError("export.dataset: set by foil itself (the dataset being exported); remove it from the recipe")
    report = runner.run(ExportStage, {**params, "dataset": dataset.url}, dataset, S.RAW, S.TRAIN, input_view="export_rows", overwrite=overwrite)
    out = _finish(dataset, report)
    if webdataset:
        out["webdataset"] = write_webdataset(dataset)
    return out


def neg_image(dataset: Dataset, params: dict[str, Any], runner: LocalRunner | RayRunner, overwrite: bool = False) -> dict[str, Any]:
    """Image hard negatives (the recipe's `neg_image` section) into table `neg_image`: the
    diffusion methods asked for (p2p, inpaint) run shard by shard on the runner's workers into
    their own tables first, then one step commits the mined rows with theirs."""
    from pipeline.negatives.image import GENERATED_TABLES, EmbedScorer, ImageNegativesConfig, check_inputs, commit
    from pipeline.negatives.image_generate import GeneratedImageNegativesStage

    config = ImageNegativesConfig.from_dict(params)
    check_inputs(dataset)  # before any generation
    Catalog(dataset).refresh()
    scorer = EmbedScorer.of_dataset(dataset)
    out: dict[str, Any] = {"generated": {}}
    for method, settings in config.generate.items():
        stage_params = {
            **settings, "method": method, "kinds": list(config.kinds), "margin": config.margin,
            "embed_model": scorer.model_name, "embed_pretrained": scorer.pretrained,
        }
        report = runner.run(
            GeneratedImageNegativesStage, stage_params, dataset, S.RAW, GENERATED_TABLES[method],
            input_view="neg_image_candidates", overwrite=overwrite,
        )
        out["generated"][method] = _finish(dataset, report)
    out.update(commit(dataset, config, overwrite=overwrite))
    return out


def imgdiff(dataset: Dataset, params: dict[str, Any], runner: LocalRunner | RayRunner, generate: dict[str, Any] | None = None,
            overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Img-Diff pairs into table `imgdiff`. With `generate` (the recipe's `imgdiff.generate`),
    the replace_object rows of `neg_text` first become image pairs (Prompt-to-Prompt, shard by
    shard on the runner's workers, table `imgdiff_generated`); then every generated and
    imported pair goes through the pair filter, the Difference Area Generator and the captioner
    (`params`: the rest of the `imgdiff` section)."""
    from pipeline.core.runners import run_dataset_step
    from pipeline.imgdiff import ImgDiffGenerateStage, ImgDiffStep

    step = ImgDiffStep.from_params(params, progress=progress)  # a bad field fails before any generation
    out: dict[str, Any] = {}
    if generate is not None:
        if not dataset.table(S.NEG_TEXT).exists():
            raise ConfigError(f"imgdiff.generate needs text negatives: run `foil negatives --dataset {dataset.url}` first, or drop imgdiff.generate")
        out["generate"] = _finish(dataset, runner.run(ImgDiffGenerateStage, generate, dataset, S.NEG_TEXT, S.IMGDIFF_GENERATED, overwrite=overwrite))
    if not any(dataset.table(t).exists() for t in ImgDiffStep.inputs):
        raise ConfigError(f"imgdiff: {dataset.url} has no pairs: import some (`foil imgdiff import`) or set imgdiff.generate in the recipe")
    report = run_dataset_step(step, dataset, overwrite=overwrite)
    Catalog(dataset).refresh()
    out.update(report.as_dict())
    return out


def imgdiff_import(dataset: Dataset, pairs: str, images: str, overwrite: bool = False) -> dict[str, Any]:
    """Existing image pairs (a pairs file and its image folder) into table `imgdiff_import`."""
    from pipeline.core.runners import run_dataset_step
    from pipeline.imgdiff.pairs import ImportPairs

    report = run_dataset_step(ImportPairs(pairs, images), dataset, overwrite=overwrite)
    Catalog(dataset).refresh()
    return report.as_dict()
