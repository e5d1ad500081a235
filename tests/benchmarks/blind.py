"""Blind (text-only) accuracy per kind of foil's text negatives on the emoji sample, before and
after the adversarial refinement.

The negatives stage runs in this process over the sample's captions (the lower-cased Unicode
names `foil demo` serves; `--limit` takes the first N, as `foil demo --limit` does). The blind
scorer is pipeline/negatives/blind.py's: a logistic regression over all-MiniLM-L6-v2
embeddings, real caption vs negative, 5-fold GroupKFold by sample. "before" scores every
candidate; "after" is a scorer refitted on the kept pairs only, on a fold split the refinement
never used, so a refinement that only fools the scorer it was fitted on would show here.

    .venv/bin/python tests/benchmarks/blind.py [--limit 600] [--kinds replace_object,...] [--max-accuracy 0.6]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="the first N captions of the sample")
    parser.add_argument("--kinds", default=None, help="comma-separated kinds (default: every kind)")
    parser.add_argument("--max-accuracy", type=float, default=0.6)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()

    import pyarrow as pa

    from pipeline.core import schema as S
    from pipeline.demo.sample import emoji_items, fetch_emoji_sample
    from pipeline.negatives.blind import TextEmbedder, accuracy, accuracy_by_kind, embed_pairs, refine
    from pipeline.negatives.text import KINDS, TextNegativesStage

    items = emoji_items(fetch_emoji_sample(), args.limit)
    captions = [i.caption for i in items]
    ids = [S.sample_id(i.image, i.caption) for i in items]
    kinds = args.kinds.split(",") if args.kinds else list(KINDS)
    start = time.perf_counter()
    stage = TextNegativesStage(kinds=kinds)
    batch = pa.RecordBatch.from_pydict({S.SAMPLE_ID: ids, S.CAPTION: captions})
    rows = pa.Table.from_batches(list(stage.run(iter([batch]))), schema=S.NEG_TEXT_SCHEMA)
    print(f"{len(captions)} captions -> {rows.num_rows} negatives in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    pairs = embed_pairs(TextEmbedder(progress=True), rows[S.SAMPLE_ID].to_pylist(), rows[S.CAPTION].to_pylist(),
                        rows[S.NEG_CAPTION].to_pylist(), rows[S.KIND].to_pylist())
    print(f"embedded in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    result = refine(pairs, args.max_accuracy, rounds=args.rounds, log=print)
    print(f"refined in {time.perf_counter() - start:.0f} s, {result.rounds} rounds, converged: {result.converged}")
    before = accuracy_by_kind(result.before, pairs.kinds)
    after = accuracy_by_kind(result.after[result.keep], pairs.kinds[result.keep])
    total, kept = Counter(pairs.kinds.tolist()), Counter(pairs.kinds[result.keep].tolist())
    print(f"\n{'kind':26s} {'pairs':>6s} {'blind before':>12s} {'kept':>6s} {'blind after (refit)':>20s}")
    for kind in sorted(total):
        print(f"{kind:26s} {total[kind]:6d} {before[kind]:12.3f} {kept[kind]:6d} {after.get(kind, float('nan')):20.3f}")
    print(f"{'all':26s} {len(pairs.kinds):6d} {accuracy(result.before):12.3f} {int(result.keep.sum()):6d} "
          f"{accuracy(result.after[result.keep]):20.3f}")
    dropped = Counter({k: v for k, v in stage.stats.dropped.items() if k.endswith((":disfluent", ":blind_too_easy"))})
    if dropped:
        print("\ngenerator rejections (fluency): " + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())))


if __name__ == "__main__":
    main()
