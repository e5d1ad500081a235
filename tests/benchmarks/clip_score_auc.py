"""How well does a foil-trained model's CLIP score separate true pairs from shuffled ones?

The real two-tower (EfficientNet-Lite0 + MiniLM, towers frozen at their shipped weights) gets
its projection heads trained (`foil train-heads`' code) on 80% of the emoji sample, split by a hash
of the image name. On the other 20%, which it never saw, CLIP score (image-text cosine) is
compared between true pairs and caption-shuffled pairs: the ROC AUC. The same towers with the
heads at their random initialisation are the baseline.

    .venv/bin/python tests/benchmarks/clip_score_auc.py [--steps 300]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
from pathlib import Path


def main() -> None:
    from flows.environment import apply_defaults

    apply_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    import pyarrow as pa

    from pipeline.core import schema as S
    from pipeline.demo.sample import emoji_items, fetch_emoji_sample
    from pipeline.models import factory as M
    from training.evaluate import evaluate
    from training.heads import HeadsConfig, train_heads

    sample = fetch_emoji_sample()
    items = emoji_items(sample)
    fold = lambda it: int(hashlib.md5(it.image.encode()).hexdigest(), 16) % 5  # noqa: E731

    def rows(subset: list) -> pa.Table:
        return pa.table({
            S.SAMPLE_ID: [it.image for it in subset], S.CAPTION: [it.caption for it in subset],
            S.NEG_CAPTION: [None] * len(subset), S.NEG_KIND: [None] * len(subset),
            S.IMAGE: [(sample / "img/google/64" / it.image).read_bytes() for it in subset],
        })

    train, held = [it for it in items if fold(it) != 0], [it for it in items if fold(it) == 0]
    work = Path(tempfile.mkdtemp(prefix="foil-bench-auc-"))
    try:
        report = train_heads(rows(train), HeadsConfig(steps=args.steps), work / "heads.pt")
        held_rows = rows(held)
        baseline = evaluate(M.create_model(M.REAL_TWO_TOWER), M.REAL_TWO_TOWER, held_rows)
        trained = evaluate(M.create_model(M.REAL_TWO_TOWER, pretrained=str(work / "heads.pt")), M.REAL_TWO_TOWER, held_rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nheads trained on {len(train)} emoji for {args.steps} steps ({report['seconds']} s, {report['feature_seconds']} s of it tower features)")
    print(f"held-out emoji: {len(held)}; pairs: true vs caption-shuffled")
    print(f"{'metric':22s} {'random heads':>12s} {'trained heads':>14s}")
    for name in ("clip_score_auc", "image_to_text_R@1", "text_to_image_R@1", "image_to_text_R@10"):
        print(f"{name:22s} {baseline[name]:12.3f} {trained[name]:14.3f}")


if __name__ == "__main__":
    main()
