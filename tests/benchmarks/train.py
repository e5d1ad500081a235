"""Training throughput: foil's loop vs open_clip's own training script, same model and batch.

Both train `foil-tiny-vit` (fp32, CPU, one process) for the same number of steps at the same
batch size, without hard negatives (open_clip_train has none), each with its own data path:
open_clip_train's synthetic dataset through its DataLoader and transforms, foil's BatchDecoder
decoding a batch of real PNG bytes every step. Both log the samples/s of every step; the median
after warm-up is compared.

    .venv/bin/python tests/benchmarks/train.py [--steps 30] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from pathlib import Path

import torch

WARMUP = 3


def open_clip_train_rate(steps: int, batch_size: int, logs: Path) -> float:
    from open_clip_train.main import main as open_clip_main

    from pipeline.models.factory import register_foil_configs

    register_foil_configs()
    open_clip_main([
        "--dataset-type", "synthetic", "--train-num-samples", str(steps * batch_size), "--batch-size", str(batch_size),
        "--epochs", "1", "--workers", "0", "--model", "foil-tiny-vit", "--lr", "5e-4", "--warmup", "2",
        "--precision", "fp32", "--log-every-n-steps", "1", "--save-frequency", "0", "--logs", str(logs),
        "--name", "bench", "--report-to", "", "--seed", "0",
    ])
    text = (logs / "bench" / "out.log").read_text()
    rates = [float(m) for m in re.findall(r"Batch \(t\): [0-9.]+, ([0-9.]+)/s,", text)]
    if len(rates) <= WARMUP:
        raise RuntimeError(f"open_clip_train logged {len(rates)} steps; expected {steps}")
    return statistics.median(rates[WARMUP:])


def foil_rate(steps: int, batch_size: int) -> float:
    from pipeline.demo.sample import emoji_items, fetch_emoji_sample
    from pipeline.models import factory as M
    from training.data import BatchDecoder
    from training.loop import LoopConfig, cosine_with_warmup, make_optimizer, train_loop
    from training.losses import build_loss

    sample = fetch_emoji_sample()
    items = emoji_items(sample, batch_size)
    raw = {
        "caption": [it.caption for it in items],
        "negative_caption": [None] * len(items),
        "image": [(sample / "img/google/64" / it.image).read_bytes() for it in items],
    }
    decode = BatchDecoder("foil-tiny-vit")

    def batches():
        while True:  # decode every step, as real training does
            yield {k: torch.from_numpy(v) for k, v in decode(raw).items()}

    torch.manual_seed(0)
    model = M.create_model("foil-tiny-vit")
    cfg = LoopConfig(steps=steps, lr=5e-4, warmup_steps=2, use_negatives=False, log_every=1)
    optimizer = make_optimizer(model, cfg)
    rates: list[float] = []
    train_loop(model, batches(), build_loss("clip"), optimizer, cosine_with_warmup(optimizer, 2, steps), cfg,
               on_step=lambda step, m: rates.append(m["samples_per_second"]))
    return statistics.median(rates[WARMUP:])


def main() -> None:
    from flows.environment import apply_defaults

    apply_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="foil-bench-train-") as tmp:
        theirs = open_clip_train_rate(args.steps, args.batch_size, Path(tmp))
    ours = foil_rate(args.steps, args.batch_size)
    print(f"model foil-tiny-vit, batch {args.batch_size}, {args.steps} steps, fp32, CPU threads {torch.get_num_threads()}")
    print(f"open_clip_train: {theirs:.1f} samples/s (median per step after {WARMUP} warm-up steps)")
    print(f"foil loop:       {ours:.1f} samples/s")
    print(f"ratio foil/open_clip_train: {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
