"""Do hard negatives help? Three trainings at equal steps and seed, scored on a held-out style.

`foil-tiny-vit` is trained on the demo's dataset (Noto emoji) three times with the same seed,
data and steps: plain CLIP loss; text hard negatives; text negatives plus mined negative images.
Each is scored on the Twemoji minimal pairs of `foil heldout-pairs` (a drawing style it never
saw): pair accuracy (the mean of the four comparisons, chance 50%) overall and per kind, and
retrieval R@1 over every Twemoji concept. The runs are tests/benchmarks/experiment.py's (one
place for the arms, the training and the scoring); `make experiment` runs them with 3 seeds and
both models.

    .venv/bin/python tests/benchmarks/hard_negatives.py [--steps 400] [--seed 0] [--dataset foil-demo]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling experiment module, run as a script

import experiment  # noqa: E402


def main() -> None:
    from flows.environment import apply_defaults

    apply_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=experiment.MODELS["foil-tiny-vit"].steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "foil" / "experiment"), help="data and finished runs (reused)")
    parser.add_argument("--dataset", help="a dataset built by `foil demo` (default: built under --work)")
    args = parser.parse_args()
    arms = list(experiment.ARMS)
    results = experiment.run_arms(Path(args.work), Path(args.dataset) if args.dataset else None, ["foil-tiny-vit"], arms, [args.seed], args.steps)
    by_arm = {r["arm"]: r for r in results}
    kinds = ["all", *sorted(k for k in results[0]["pairs"] if k != "all")]
    print(f"foil-tiny-vit, {args.steps} steps, seed {args.seed}, same data; held-out Twemoji minimal pairs (pair accuracy, chance 50%)")
    print(f"{'metric':<34}" + "".join(f"{arm:>14}" for arm in arms))
    for kind in kinds:
        n = int(results[0]["pairs"][kind]["pairs"])
        print(f"{f'{kind} ({n} pairs)':<34}" + "".join(f"{by_arm[arm]['pairs'][kind]['pair_accuracy']:>14.4f}" for arm in arms))
    for name in ("group_score", "text_score", "image_score"):
        print(f"{'all: ' + name:<34}" + "".join(f"{by_arm[arm]['pairs']['all'][name]:>14.4f}" for arm in arms))
    for name in ("image_to_text_R@1", "text_to_image_R@1", "image_to_text_R@5"):
        print(f"{'retrieval ' + name:<34}" + "".join(f"{by_arm[arm]['retrieval'][name]:>14.4f}" for arm in arms))
    print(f"{'seconds (train + eval)':<34}" + "".join(f"{by_arm[arm]['seconds']:>14.0f}" for arm in arms))
    plain = by_arm["plain"]["pairs"]["all"]["pair_accuracy"]
    for arm in arms[1:]:
        print(f"{arm} over plain: {100 * (by_arm[arm]['pairs']['all']['pair_accuracy'] - plain):+.1f} points of pair accuracy")


if __name__ == "__main__":
    main()
