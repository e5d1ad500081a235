"""Do foil's negatives make a better encoder? Arms at equal steps and seed, scored on a drawing
style the models never trained on.

Training data is the demo's dataset (Noto emoji, `foil demo`'s recipe: curated rows, text
negatives, mined image negatives); evaluation is the Twemoji minimal pairs of
`foil heldout-pairs` (colour, skin tone, gender/age, one-word swaps, insertions) and retrieval
over every Twemoji concept. Arms, the same for each model, seed and step count:

- `plain`: CLIP's loss, no negatives;
- `text`: the text hard negatives (NegCLIP layout);
- `text+image`: text negatives plus the mined negative images, each (negative image, negative
  caption) a pair of its own (TripletCLIP layout, see training/losses.py);
- `plain+families`, `text+families`, `text+image+families`: the same three with
  `train.batching: families` (training/batching.py): rows whose negative caption is another
  row's caption share a batch, so a minimal pair's two real images meet in the loss.

Models: `foil-tiny-vit` from scratch, and the real two-tower `foil-effnet-lite0-minilm`
fine-tuned whole (both towers and heads) at 64 px, the emoji's own size, which keeps it within
a CPU budget (EfficientNet pools globally, so a smaller input works), after its random heads are
fitted alone on the frozen towers' features as `foil train-heads` fits them (`warm_heads`). Training runs in-process
with foil's own loop, loss and batch decoder (the code `foil train` runs inside Ray Train),
images decoded once. Each finished run is appended to `<work>/runs.jsonl` with a fingerprint of
the code it ran (`code_fingerprint`) and skipped when the command is run again with the same
model, arm, seed, recipe, dataset and code, so the seeds can be spread over several sittings and
a change to the training or scoring code makes its runs again.

Writes `docs/experiment.md` (mean ± std over seeds per arm and pair kind, retrieval, the time
of each run, the gap to the issue's target, and the blind accuracy of the negatives training
used) and `docs/experiment.png`.

    .venv/bin/python tests/benchmarks/experiment.py [--seeds 0 1 2] [--models foil-tiny-vit] [--arms plain text]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# What a run's result depends on besides its arguments: the loop, losses, batching, decoder and
# pair scoring (training/), the models (pipeline/models/), the held-out pairs and this file.
CODE_PATHS = ("training", "pipeline/models", "pipeline/demo/heldout.py", "tests/benchmarks/experiment.py")
TARGET_GAIN = 0.15  # issue 16: best arm over plain, pair accuracy, mean of 3 seeds
MAX_R1_LOSS = 0.01  # ... with retrieval R@1 no more than 1 point lower


@dataclass(frozen=True)
class Arm:
    use_negatives: bool
    use_negative_images: bool
    batching: str = "random"  # training/batching.py


ARMS = {
    "plain": Arm(use_negatives=False, use_negative_images=False),
    "text": Arm(use_negatives=True, use_negative_images=False),
    "text+image": Arm(use_negatives=True, use_negative_images=True),
    "plain+families": Arm(use_negatives=False, use_negative_images=False, batching="families"),
    "text+families": Arm(use_negatives=True, use_negative_images=False, batching="families"),
    "text+image+families": Arm(use_negatives=True, use_negative_images=True, batching="families"),
}


@dataclass(frozen=True)
class ModelRecipe:
    steps: int
    batch_size: int
    lr: float
    image_size: int
    warmup_steps: int = 10
    # Steps of fitting the projection heads alone on frozen tower features (training/heads.py)
    # before the whole model is fine-tuned, the same for every arm; 0: none. A real two-tower's
    # heads start random, and a few hundred steps at a fine-tuning rate leave them near it
    # (linear probing, then fine-tuning).
    warm_heads: int = 0


MODELS = {
    "foil-tiny-vit": ModelRecipe(steps=400, batch_size=64, lr=1e-3, image_size=64),
    "foil-effnet-lite0-minilm": ModelRecipe(steps=150, batch_size=32, lr=5e-5, image_size=64, warm_heads=300),
}


def _log(line: str) -> None:
    print(f"[experiment] {line}", flush=True)


# -- data ---------------------------------------------------------------------------------
def demo_dataset(work: Path) -> Path:
    """The demo's dataset, built by `foil demo` (its recipe, its defaults) unless already there."""
    out = work / "demo"
    if not (out / "train" / "_manifest.json").exists():
        _log(f"building the training data with `foil demo --out {out}` (once)")
        subprocess.run([str(Path(sys.executable).parent / "foil"), "demo", "--out", str(out)], check=True)
    return out


def heldout_folder(work: Path) -> Path:
    from pipeline.demo.heldout import PAIRS_FILE, build_heldout, fetch_twemoji

    out = work / "heldout"
    if not (out / PAIRS_FILE).exists():
        result = build_heldout(fetch_twemoji(), out, progress=_log)
        _log(f"held-out Twemoji pairs: {result.pairs} ({result.kept}), dropped {result.dropped}, {result.concepts} concepts")
    return out


class TrainingRows:
    """The dataset's training split, decoded once per (image size, tokenizer): uint8 images,
    negative images and tokens, sampled into batches by index."""

    def __init__(self, dataset: Path):
        import pyarrow.compute as pc

        from pipeline.core import schema as S
        from pipeline.core.store import Dataset

        table = Dataset(str(dataset)).table(S.TRAIN)
        if not table.exists():
            raise SystemExit(f"{dataset} has no table `train`: build it with `foil demo --out {dataset}`")
        rows = table.read()  # every column: an export without negative images has no `negative_image`
        keep = [c for c in (S.SAMPLE_ID, S.CAPTION, S.NEG_CAPTION, S.NEG_KIND, S.SPLIT, S.IMAGE, S.NEG_IMAGE_COL) if c in rows.schema.names]
        rows = rows.select(keep)
        self.rows = rows.filter(pc.equal(rows[S.SPLIT], "train"))
        self._decoded: dict[tuple[str, int], dict[str, np.ndarray]] = {}
        self.heldout_images: dict[tuple[Path, int], np.ndarray] = {}  # decoded once for every run's evaluation
        self._features: dict[tuple[str, int], tuple[Any, Any]] = {}

    def decoded(self, model_name: str, image_size: int) -> dict[str, np.ndarray]:
        from training.data import BatchDecoder

        key = (model_name, image_size)
        if key not in self._decoded:
            decode = BatchDecoder(model_name)
            decode.size = image_size  # the recipe's resolution, not the architecture's default
            parts = [decode(self.rows.slice(i, 256).to_pydict()) for i in range(0, self.rows.num_rows, 256)]
            self._decoded[key] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self._decoded[key]

    def tower_features(self, model: Any, model_name: str, image_size: int) -> tuple[Any, Any]:
        """The towers' outputs before the heads, once per (model, size): the towers start from
        the same pretrained weights in every run, only the heads' initialisation differs."""
        from training.heads import tower_features

        key = (model_name, image_size)
        if key not in self._features:
            self._features[key] = tower_features(model, model_name, self.rows, image_size=image_size)
        return self._features[key]

    def stats(self) -> dict[str, int]:
        from pipeline.core import schema as S

        d = self.rows.to_pydict()
        with_image = sum(1 for b in d.get(S.NEG_IMAGE_COL, []) if b)
        return {"rows": self.rows.num_rows, "with_negative_caption": sum(1 for n in d[S.NEG_CAPTION] if n), "with_negative_image": with_image}


def batches(data: dict[str, np.ndarray], batch_size: int, seed: int, batching: str = "random") -> Iterator[dict[str, Any]]:
    """Epochs of `batch_size` rows grouped as `foil train` groups them (training/batching.py), forever, seeded."""
    import torch

    from training.batching import epoch_batches, families

    rng = np.random.default_rng(seed)
    groups = families(data) if batching == "families" else None
    while True:
        for idx in epoch_batches(data, batch_size, rng, batching, groups):
            yield {k: torch.from_numpy(v[idx]) for k, v in data.items()}


# -- one run ------------------------------------------------------------------------------
def train_and_score(model_name: str, recipe: ModelRecipe, arm_name: str, seed: int, rows: TrainingRows, heldout: Path) -> dict[str, Any]:
    import torch

    from pipeline.demo.heldout import CONCEPTS_FILE, PAIRS_FILE
    from pipeline.models import factory as M
    from training import pairs
    from training.config import TrainConfig
    from training.loop import LoopConfig, cosine_with_warmup, make_optimizer, train_loop
    from training.losses import build_loss

    arm = ARMS[arm_name]
    data = rows.decoded(model_name, recipe.image_size)
    torch.manual_seed(seed)
    model = M.create_model(model_name)
    start = time.perf_counter()
    if recipe.warm_heads:
        from training.heads import HeadsConfig, fit_heads

        fit_heads(model, *rows.tower_features(model, model_name, recipe.image_size), HeadsConfig(model=model_name, steps=recipe.warm_heads, seed=seed),
                  progress=lambda line: _log(f"{model_name} {arm_name} seed {seed}: heads {line}"))
    cfg = LoopConfig(steps=recipe.steps, lr=recipe.lr, warmup_steps=recipe.warmup_steps, use_negatives=arm.use_negatives,
                     use_negative_images=arm.use_negative_images, log_every=50,
                     freeze_bn_stats=TrainConfig(model=model_name).starts_from_real_weights)  # as `foil train` decides
    optimizer = make_optimizer(model, cfg)
    losses: list[float] = []

    def on_step(step: int, metrics: dict[str, float]) -> None:
        losses.append(metrics["loss"])
        _log(f"{model_name} {arm_name} seed {seed}: step {step}/{recipe.steps} loss {metrics['loss']:.3f}")

    train_loop(model, batches(data, recipe.batch_size, seed, arm.batching), build_loss("clip"), optimizer,
               cosine_with_warmup(optimizer, recipe.warmup_steps, recipe.steps), cfg, on_step=on_step)
    train_seconds = time.perf_counter() - start
    embedder = pairs.ModelEmbedder(model.eval(), model_name, recipe.image_size, rows.heldout_images)
    scores = pairs.score_pairs(embedder, pairs.read_pairs(heldout / PAIRS_FILE))
    retrieval = pairs.score_retrieval(embedder, pairs.read_concepts(heldout / CONCEPTS_FILE))
    return {
        "model": model_name, "arm": arm_name, "seed": seed, "recipe": asdict(recipe), "pairs": scores, "retrieval": retrieval,
        "train_seconds": round(train_seconds, 1), "seconds": round(time.perf_counter() - start, 1), "last_loss": losses[-1] if losses else None,
    }


def code_fingerprint(root: Path = REPO) -> str:
    """sha256 (first 16 hex digits) over the paths and bytes of the Python files under `CODE_PATHS`."""
    digest = hashlib.sha256()
    for entry in CODE_PATHS:
        path = root / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def run_arms(work: Path, dataset: Path | None, models: list[str], arms: list[str], seeds: list[int], steps: int | None = None) -> list[dict[str, Any]]:
    """Every (model, arm, seed) run, reusing the ones `<work>/runs.jsonl` already holds."""
    work.mkdir(parents=True, exist_ok=True)
    dataset = dataset or demo_dataset(work)
    heldout = heldout_folder(work)
    log = work / "runs.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    rows: TrainingRows | None = None
    results = []
    code = code_fingerprint()
    for model_name in models:
        recipe = MODELS[model_name]
        if steps is not None:
            recipe = replace(recipe, steps=steps)
        for seed in seeds:
            for arm in arms:
                key = (model_name, arm, seed, asdict(recipe), str(dataset), code)
                previous = [r for r in done if (r["model"], r["arm"], r["seed"], r["recipe"], r.get("dataset"), r.get("code")) == key]
                if previous:
                    results.append(previous[-1])
                    continue
                rows = rows or TrainingRows(dataset)
                result = {**train_and_score(model_name, recipe, arm, seed, rows, heldout), "dataset": str(dataset), "code": code,
                          "data": rows.stats()}
                _log(f"{model_name} {arm} seed {seed}: pair accuracy {result['pairs']['all']['pair_accuracy']:.4f}, "
                     f"R@1 {result['retrieval']['image_to_text_R@1']:.4f}, {result['seconds']:.0f} s")
                with open(log, "a") as f:
                    f.write(json.dumps(result) + "\n")
                results.append(result)
    return results


# -- the report ---------------------------------------------------------------------------
def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * float(np.mean(values))
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {100 * float(np.std(values, ddof=1)):.1f}"


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{model: {arm: {metric: [value per seed]}}}; metrics `<kind>:<score>` and `retrieval:<name>`."""
    table: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in results:
        cell = table[r["model"]][r["arm"]]
        for kind, values in r["pairs"].items():
            for name, value in values.items():
                cell[f"{kind}:{name}"].append(value)
        for name, value in r["retrieval"].items():
            cell[f"retrieval:{name}"].append(value)
        cell["seconds"].append(r["seconds"])
    return table


def blind_accuracy(dataset: Path) -> dict[str, dict[str, float]] | None:
    """Blind (text-only) accuracy per kind of the negatives the training split carries."""
    try:
        from pipeline.negatives import blind
    except ImportError:
        return None
    import pyarrow.compute as pc

    from pipeline.core import schema as S
    from pipeline.core.store import Dataset

    rows = Dataset(str(dataset)).table(S.TRAIN).read(columns=[S.SAMPLE_ID, S.CAPTION, S.NEG_CAPTION, S.NEG_KIND, S.SPLIT])
    rows = rows.filter(pc.and_(pc.equal(rows[S.SPLIT], "train"), pc.is_valid(rows[S.NEG_CAPTION]))).to_pydict()
    return blind.measure(rows[S.SAMPLE_ID], rows[S.CAPTION], rows[S.NEG_CAPTION], rows[S.NEG_KIND])


def write_report(results: list[dict[str, Any]], blind: dict[str, dict[str, float]] | None, out: Path, command: str) -> None:
    table = summarize(results)
    kinds = sorted({k for r in results for k in r["pairs"] if k != "all"})
    heldout_counts = {k: int(v["pairs"]) for k, v in results[0]["pairs"].items()} if results else {}
    lines = [
        "# Do foil's negatives make a better encoder?",
        "",
        f"Written by `{command}` (tests/benchmarks/experiment.py). Training: the `foil demo` dataset (Noto emoji, "
        "`emoji-datasource-google`). Evaluation: Twemoji minimal pairs (`emoji-datasource-twitter`, a drawing style "
        "never trained on) from `foil heldout-pairs`, and retrieval over every Twemoji concept. Pair accuracy is the "
        "mean of the four single comparisons (chance 50%); text/image/group scores are Winoground's (chance 25/25/16.7%). "
        "Values are % as mean ± sample std over seeds; a single value means one seed. "
        f"Code fingerprint of the runs (`code_fingerprint`): {', '.join(sorted({r.get('code') or 'unrecorded' for r in results}))}.",
        "",
        f"Held-out pairs per kind: {', '.join(f'{k} {v:.0f}' for k, v in heldout_counts.items())}.",
        "",
    ]
    for model, arms in table.items():
        seeds = sorted({r["seed"] for r in results if r["model"] == model})
        recipe = next(r["recipe"] for r in results if r["model"] == model)
        data = next(r.get("data") for r in results if r["model"] == model)
        lines += [f"## {model}", "",
                  f"{recipe['steps']} steps, batch {recipe['batch_size']}, lr {recipe['lr']}, {recipe['image_size']} px; seeds {seeds}; "
                  f"training rows ({next(r.get('dataset') for r in results if r['model'] == model)}): {data}.", ""]
        if "text+image" in arms and data and not data.get("with_negative_image"):
            lines += ["**The training data holds no negative images: `text+image` trained exactly as `text`.**", ""]
        header = ["arm", "pair acc.", "text", "image", "group", *[f"{k}" for k in kinds], "R@1 i→t", "R@1 t→i", "R@5 i→t", "s / run"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for arm in ARMS:
            if arm not in arms:
                continue
            c = arms[arm]
            cells = [arm, _mean_std(c["all:pair_accuracy"]), _mean_std(c["all:text_score"]), _mean_std(c["all:image_score"]),
                     _mean_std(c["all:group_score"]), *[_mean_std(c[f"{k}:pair_accuracy"]) for k in kinds],
                     _mean_std(c["retrieval:image_to_text_R@1"]), _mean_std(c["retrieval:text_to_image_R@1"]),
                     _mean_std(c["retrieval:image_to_text_R@5"]), f"{np.mean(c['seconds']):.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        if "plain" in arms and len(arms) > 1:
            plain = float(np.mean(arms["plain"]["all:pair_accuracy"]))
            plain_r1 = float(np.mean(arms["plain"]["retrieval:image_to_text_R@1"]))
            best = max((a for a in arms if a != "plain"), key=lambda a: float(np.mean(arms[a]["all:pair_accuracy"])))
            gain = float(np.mean(arms[best]["all:pair_accuracy"])) - plain
            r1 = float(np.mean(arms[best]["retrieval:image_to_text_R@1"])) - plain_r1
            met = gain >= TARGET_GAIN and r1 >= -MAX_R1_LOSS
            lines += ["", f"Best arm `{best}`: {100 * gain:+.1f} points of pair accuracy over `plain` (target +{100 * TARGET_GAIN:.0f}: "
                          f"{'met' if met else f'not met, {100 * (TARGET_GAIN - gain):.1f} points short'}), R@1 i→t {100 * r1:+.1f} points."]
        lines.append("")
    if blind is not None:
        lines += ["## Blind accuracy of the negatives training used", "",
                  "A text-only scorer (logistic regression over MiniLM caption embeddings, 5 held-out folds grouped by sample, "
                  "`pipeline/negatives/blind.py`) picks the real caption over its negative this often (50% = needs the image):", "",
                  "| kind | pairs | blind accuracy |", "|---|---|---|"]
        lines += [f"| {k} | {int(v['pairs'])} | {100 * v['blind_accuracy']:.1f} |" for k, v in blind.items()]
        lines.append("")
    total = sum(r["seconds"] for r in results)
    lines += ["## Time", "", f"{len(results)} runs, {total / 60:.1f} minutes of training and evaluation in all "
              "(the per-run times are in the tables; data building by `foil demo` not included).", ""]
    if out.with_suffix(".png").exists():  # main() draws it first
        lines += [f"![pair accuracy per kind]({out.with_suffix('.png').name})", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


def plot(results: list[dict[str, Any]], out: Path) -> None:
    """Pair accuracy per kind, one panel per model, one bar per arm (mean, std as error bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarize(results)
    kinds = ["all", *sorted({k for r in results for k in r["pairs"] if k != "all"})]
    fig, axes = plt.subplots(1, len(table), figsize=(7 * len(table), 5), squeeze=False)
    for ax, (model, arms) in zip(axes[0], table.items()):
        width = 0.8 / max(1, len(arms))
        for i, arm in enumerate(a for a in ARMS if a in arms):
            means = [100 * np.mean(arms[arm][f"{k}:pair_accuracy"]) for k in kinds]
            errs = [100 * np.std(arms[arm][f"{k}:pair_accuracy"], ddof=1) if len(arms[arm][f"{k}:pair_accuracy"]) > 1 else 0 for k in kinds]
            ax.bar(np.arange(len(kinds)) + i * width, means, width, yerr=errs, label=arm)
        ax.axhline(50, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(np.arange(len(kinds)) + width * (len(arms) - 1) / 2, kinds, rotation=30)
        ax.set_ylabel("pair accuracy on held-out Twemoji, %")
        ax.set_title(model)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8)  # below the bars, never over them
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    from flows.environment import apply_defaults

    apply_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="override every model's steps (quick looks; the report says so)")
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "foil" / "experiment"), help="data and finished runs (reused)")
    parser.add_argument("--dataset", help="a dataset built by `foil demo` to train on (default: built under --work)")
    parser.add_argument("--out", default=str(REPO / "docs" / "experiment.md"))
    args = parser.parse_args()
    work = Path(args.work)
    dataset = Path(args.dataset) if args.dataset else None
    results = run_arms(work, dataset, args.models, args.arms, args.seeds, args.steps)
    out = Path(args.out)
    plot(results, out.with_suffix(".png"))
    write_report(results, blind_accuracy(dataset or work / "demo"), out, "python " + " ".join([str(Path(sys.argv[0]).relative_to(REPO)) if Path(sys.argv[0]).is_absolute() else sys.argv[0], *sys.argv[1:]]))
    print(out.read_text())


if __name__ == "__main__":
    main()
