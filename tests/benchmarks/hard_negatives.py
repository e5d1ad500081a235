"""Do hard negatives help? Two trainings on the emoji sample at equal steps, with and without.

Builds the dataset the way `foil demo` does (crawl from a local server, score, curate, text
negatives, export), then trains `foil-tiny-vit` twice through Ray Train with the same seed,
data and steps, once with the hard-negative loss and once with plain CLIP, and evaluates both on
the held-out split: hard-negative accuracy (overall and per kind) and retrieval R@1.

    .venv/bin/python tests/benchmarks/hard_negatives.py [--steps 200]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path


def main() -> None:
    from flows.environment import apply_defaults

    apply_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    from pipeline import steps
    from flows.recipe import load_recipe
    from pipeline.demo.sample import ImageServer, emoji_items, fetch_emoji_sample, write_url_list
    from pipeline.core.store import Dataset
    from training import jobs
    from training.ray_train import TrainConfig

    sample = fetch_emoji_sample()
    work = Path(tempfile.mkdtemp(prefix="foil-bench-hardneg-"))
    try:
        ds = Dataset(work / "ds")
        recipe = load_recipe(None)
        recipe.runner_kind = "local"
        runner = recipe.runner(progress=False)
        with ImageServer(sample) as server:
            urls = write_url_list(emoji_items(sample), server.url, work / "urls.parquet")
            steps.crawl(ds, [str(urls)], recipe.crawl_params, runner, **recipe.ingest)
        steps.score(ds, runner)
        steps.curate(ds, recipe.curate)
        steps.negatives(ds, recipe.negatives, runner)
        steps.export(ds, recipe.export, runner)

        results = {}
        for name, use_negatives in (("with-negatives", True), ("without-negatives", False)):
            cfg = TrainConfig.from_dict({**recipe.train, "steps": args.steps, "batch_size": args.batch_size,
                                         "checkpoint_every": args.steps, "use_negatives": use_negatives})
            run_id, result = jobs.train(ds, cfg, str(work / "ckpt"), workers=1, name=name)
            results[name] = jobs.evaluate(ds, result.model_weights, cfg.model, run_id)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    keys = sorted(k for k in results["with-negatives"] if k.startswith("hard_negative_accuracy") or k.endswith("R@1"))
    print(f"foil-tiny-vit, {args.steps} steps, batch {args.batch_size}, same seed and data; eval split of the emoji sample")
    print(f"{'metric':<45} {'with negatives':>15} {'without':>10}")
    for key in keys:
        print(f"{key:<45} {results['with-negatives'][key]:>15.4f} {results['without-negatives'][key]:>10.4f}")
    gain = results["with-negatives"]["hard_negative_accuracy"] - results["without-negatives"]["hard_negative_accuracy"]
    print(f"hard-negative accuracy gain: {gain:+.4f} (on {int(results['with-negatives']['hard_negative_rows'])} eval rows)")


if __name__ == "__main__":
    main()
