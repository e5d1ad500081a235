"""Recipes: one YAML file that configures every stage, validated once at the edge.

Each section is checked against what its stage accepts, and the first bad field is reported by
its dotted path (`crawl.params.resize_mode: ...`), before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.catalog import validate_thresholds
from pipeline.core.runners import LocalRunner, RayRunner
from pipeline.curate.dedup import DedupConfig
from pipeline.negatives.image import ImageNegativesConfig
from pipeline.core.stage import ConfigError
from pipeline.stages import build_stage
from training.config import TrainConfig

SECTIONS = ("runner", "crawl", "heads", "embed", "dedup", "curate", "negatives", "neg_image", "imgdiff", "export", "train")
# `heads`: the end-to-end flow first trains its own filter model (`foil train-heads` on the
# rule-curated rows) and embeds with it; the fields of training.heads.HeadsConfig, and
# `max_rows`: train on at most that many of those rows (a stable sample), bounding the towers' pass.
HEADS_FIELDS = ("model", "steps", "batch_size", "lr", "max_rows")
RUNNER_KINDS = ("ray", "local")


@dataclass
class Recipe:
    runner_kind: str = "ray"
    runner_address: str | None = None
    retries: int = 2
    gpus_per_actor: float = 0  # GPUs each model-stage actor reserves (Ray runner)
    crawl_params: dict[str, Any] = field(default_factory=dict)
    shard_rows: int = 1000
    shard_by_host: bool = False  # one host per url shard (urls.ingest_urls), for per-host caps on a cluster
    url_col: str = "url"
    caption_col: str = "caption"
    embed: dict[str, Any] | None = None  # None: no embedding stage in the end-to-end flow
    dedup: dict[str, Any] = field(default_factory=dict)
    curate: dict[str, float] = field(default_factory=dict)
    negatives: dict[str, Any] = field(default_factory=dict)
    negatives_knn: dict[str, Any] | None = None  # None: no kNN mining
    negatives_blind: dict[str, Any] | None = None  # None: no blind scoring / refinement (BlindRefineStep)
    export: dict[str, Any] = field(default_factory=dict)
    export_webdataset: bool = False
    neg_image: dict[str, Any] = field(default_factory=dict)  # `foil neg-image` (ImageNegativesConfig)
    imgdiff: dict[str, Any] = field(default_factory=dict)  # `foil imgdiff`: filter, areas, captions (ImgDiffStep)
    imgdiff_generate: dict[str, Any] | None = None  # `imgdiff.generate`: pairs from neg_text; None: imported pairs only
    heads: dict[str, Any] | None = None  # None: the end-to-end flow trains no filter model of its own
    train: dict[str, Any] = field(default_factory=dict)
    train_workers: int = 1
    source: str = "<defaults>"

    @property
    def ingest(self) -> dict[str, Any]:
        """How url lists are read: keyword arguments of `steps.crawl`."""
        return {"url_col": self.url_col, "caption_col": self.caption_col, "shard_rows": self.shard_rows, "shard_by_host": self.shard_by_host}

    def runner(self, progress: bool = True) -> LocalRunner | RayRunner:
        """The runner section as an object: in-process, or Ray (embedded, or `address`)."""
        if self.runner_kind == "local":
            return LocalRunner(retries=self.retries, progress=progress)
        return RayRunner(address=self.runner_address, retries=self.retries, progress=progress, gpus_per_actor=self.gpus_per_actor)


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: must be a mapping, got {type(value).__name__}")
    return value


def _expect(section: dict[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    for key in section:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown field; known: {', '.join(allowed)}")


def parse_recipe(data: Any, source: str = "<recipe>") -> Recipe:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a mapping of sections ({', '.join(SECTIONS)})")
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(f"{key}: unknown recipe section; known: {', '.join(SECTIONS)}")
    recipe = Recipe(source=source)

    runner = _section(data, "runner")
    _expect(runner, "runner", ("kind", "address", "retries", "gpus_per_actor"))
    recipe.runner_kind = runner.get("kind", "ray")
    if recipe.runner_kind not in RUNNER_KINDS:
        raise ConfigError(f"runner.kind: {recipe.runner_kind!r} is not one of {', '.join(RUNNER_KINDS)}")
    recipe.runner_address = runner.get("address")
    recipe.retries = runner.get("retries", 2)
    if isinstance(recipe.retries, bool) or not isinstance(recipe.retries, int) or recipe.retries < 0:
        raise ConfigError(f"runner.retries: must be a non-negative integer, got {recipe.retries!r}")
    recipe.gpus_per_actor = runner.get("gpus_per_actor", 0)
    if isinstance(recipe.gpus_per_actor, bool) or not isinstance(recipe.gpus_per_actor, (int, float)) or recipe.gpus_per_actor < 0:
        raise ConfigError(f"runner.gpus_per_actor: must be a non-negative number, got {recipe.gpus_per_actor!r}")
    if recipe.gpus_per_actor and recipe.runner_kind != "ray":
        raise ConfigError("runner.gpus_per_actor: needs runner.kind ray")

    crawl = _section(data, "crawl")
    _expect(crawl, "crawl", ("params", "shard_rows", "shard_by_host", "url_col", "caption_col", "per_host"))
    recipe.crawl_params = dict(_section(crawl, "params"))
    if "per_host" in crawl:  # `crawl.per_host` is shorthand for `crawl.params.per_host`
        if "per_host" in recipe.crawl_params:
            raise ConfigError("crawl.per_host: given twice (also in crawl.params.per_host)")
        recipe.crawl_params["per_host"] = crawl["per_host"]
    build_stage("crawl", recipe.crawl_params)
    recipe.shard_rows = crawl.get("shard_rows", 1000)
    if isinstance(recipe.shard_rows, bool) or not isinstance(recipe.shard_rows, int) or recipe.shard_rows <= 0:
        raise ConfigError(f"crawl.shard_rows: must be a positive integer, got {recipe.shard_rows!r}")
    recipe.shard_by_host = crawl.get("shard_by_host", False)
    if not isinstance(recipe.shard_by_host, bool):
        raise ConfigError(f"crawl.shard_by_host: must be true or false, got {recipe.shard_by_host!r}")
    recipe.url_col = crawl.get("url_col", "url")
    recipe.caption_col = crawl.get("caption_col", "caption")

    if "heads" in data:
        recipe.heads = _section(data, "heads")
        _expect(recipe.heads, "heads", HEADS_FIELDS)
        for key in ("steps", "batch_size", "max_rows"):
            value = recipe.heads.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"heads.{key}: must be a positive integer, got {value!r}")
        lr = recipe.heads.get("lr", 1e-3)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
            raise ConfigError(f"heads.lr: must be a positive number, got {lr!r}")
        if "embed" in data and _section(data, "embed").get("pretrained"):
            raise ConfigError("embed.pretrained: the heads section trains the embed model; give one or the other")
    if "embed" in data:
        recipe.embed = _section(data, "embed")
        build_stage("embed", recipe.embed)
    recipe.dedup = _section(data, "dedup")
    DedupConfig.from_dict(recipe.dedup)
    recipe.curate = validate_thresholds(_section(data, "curate"))
    recipe.negatives = dict(_section(data, "negatives"))
    knn = recipe.negatives.pop("knn", None)
    if knn is not None and knn is not False:
        knn = {} if knn is True else knn
        if not isinstance(knn, dict):
            raise ConfigError(f"negatives.knn: must be true, false or a mapping (max_cosine, k), got {knn!r}")
        _expect(knn, "negatives.knn", ("max_cosine", "k"))
        recipe.negatives_knn = knn
    blind = recipe.negatives.pop("blind", None)
    if blind is not None and blind is not False:
        blind = {} if blind is True else blind
        if not isinstance(blind, dict):
            raise ConfigError(f"negatives.blind: must be true, false or a mapping (max_accuracy, folds, rounds, seed), got {blind!r}")
        _expect(blind, "negatives.blind", ("max_accuracy", "folds", "rounds", "seed"))
        from pipeline.negatives.blind import BlindRefineStep

        BlindRefineStep(**blind)  # its own checks name the field
        recipe.negatives_blind = blind
    build_stage("negatives", recipe.negatives)
    recipe.neg_image = _section(data, "neg_image")
    image_negatives = ImageNegativesConfig.from_dict(recipe.neg_image)
    for method, settings in image_negatives.generate.items():  # each diffusion method's own fields
        try:
            build_stage("neg_image", {**settings, "method": method})
        except ConfigError as exc:  # name the subsection: neg_image.p2p.steps, not neg_image.steps
            message = str(exc)
            if not message.startswith(f"neg_image.{method}."):
                message = message.replace("neg_image.", f"neg_image.{method}.", 1)
            raise ConfigError(message) from None
    recipe.imgdiff = dict(_section(data, "imgdiff"))
    generate = recipe.imgdiff.pop("generate", None)
    if generate is not None:
        if not isinstance(generate, dict):
            raise ConfigError(f"imgdiff.generate: must be a mapping (pipeline, steps, ...), got {generate!r}")
        try:
            build_stage("imgdiff_generate", generate)
        except ConfigError as exc:  # the stage's registry key is not the recipe's path
            raise ConfigError(str(exc).replace("imgdiff_generate.", "imgdiff.generate.", 1)) from None
        recipe.imgdiff_generate = generate
    if "model" not in recipe.imgdiff and recipe.embed and recipe.embed.get("model"):  # the dataset's embed model scores pairs
        recipe.imgdiff["model"] = recipe.embed["model"]
        recipe.imgdiff.setdefault("pretrained", recipe.embed.get("pretrained"))
    from pipeline.imgdiff import ImgDiffStep

    ImgDiffStep.from_params(recipe.imgdiff, progress=False)  # validates the fields; builds no model
    recipe.export = dict(_section(data, "export"))
    recipe.export_webdataset = recipe.export.pop("webdataset", False)
    if not isinstance(recipe.export_webdataset, bool):
        raise ConfigError(f"export.webdataset: must be true or false, got {recipe.export_webdataset!r}")
    build_stage("export", recipe.export)

    train = dict(_section(data, "train"))
    recipe.train_workers = train.pop("workers", 1)
    if isinstance(recipe.train_workers, bool) or not isinstance(recipe.train_workers, int) or recipe.train_workers <= 0:
        raise ConfigError(f"train.workers: must be a positive integer, got {recipe.train_workers!r}")
    # validated here so a bad field fails before crawling; training.config imports no torch
    TrainConfig.from_dict(train)
    recipe.train = train
    return recipe


def builtin_recipes() -> list[str]:
    return sorted(f.name[: -len(".yaml")] for f in (resources.files("flows") / "recipes").iterdir() if f.name.endswith(".yaml"))


DEFAULT_RECIPE = "default"  # safe on the open web: no private addresses, robots.txt, per-host caps


def load_recipe(path: str | Path | None) -> Recipe:
    """Read and validate a recipe file; None gives the built-in default recipe, and a bare name
    (`datacomp-basic`, `demo`) that is not a file names a built-in recipe."""
    if path is None:
        path = DEFAULT_RECIPE
    if not Path(path).exists() and str(path) in builtin_recipes():
        text = (resources.files("flows") / "recipes" / f"{path}.yaml").read_text(encoding="utf-8")
        source = f"{path}.yaml (built in)"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such recipe file (built-in recipes: {', '.join(builtin_recipes())})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: recipe is not valid UTF-8") from None
        source = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_recipe(data, source)
