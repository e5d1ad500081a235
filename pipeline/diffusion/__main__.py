"""A whole-process entry to the diffusion room, for benchmarks and quick looks at a pipeline:

    python -m pipeline.diffusion p2p --pipeline tiny:txt2img --prompts pairs.tsv --out DIR [--batch 4 --steps 4]
    python -m pipeline.diffusion inpaint --pipeline tiny:inpaint --items items.tsv --out DIR [--batch 4 --steps 4]

`pairs.tsv`: one pair a line, `caption<TAB>edited caption[<TAB>seed]`; `items.tsv`: `image
file<TAB>x0,y0,x1,y1<TAB>caption[<TAB>seed]` (the box is the region to repaint). Images are
written as PNGs to DIR; a JSON line with the counts and seconds goes to stdout. Bad input is one
line on stderr and exit status 2. The dataset stage is `foil neg-image`; this entry is its core
without the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from pipeline.core.stage import ConfigError


def _rows(path: str, min_fields: int, what: str) -> list[list[str]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({type(err).__name__})") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < min_fields:
            raise ConfigError(f"{path}:{n}: expected {what}")
        rows.append(fields)
    if not rows:
        raise ConfigError(f"{path}: no rows")
    return rows


def _seed(fields: list[str], index: int, position: int, path: str) -> int:
    if len(fields) <= position:
        return index
    try:
        return int(fields[position])
    except ValueError:
        raise ConfigError(f"{path}: row {index + 1}: seed {fields[position]!r} is not an integer") from None


def _progress(total: int, unit: str):
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty())
    return bar, lambda done: bar.update(done - bar.n)


def run_p2p(args: argparse.Namespace) -> dict:
    from pipeline.diffusion.loading import load_pipeline
    from pipeline.diffusion.p2p import generate_pairs

    rows = _rows(args.prompts, 2, "caption<TAB>edited caption[<TAB>seed]")
    loaded = load_pipeline(args.pipeline, field="--pipeline")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar, progress = _progress(len(rows), "pair")
    pairs = generate_pairs(
        loaded, [r[0] for r in rows], [r[1] for r in rows], [_seed(r, i, 2, args.prompts) for i, r in enumerate(rows)],
        steps=args.steps, guidance=args.guidance, size=args.size, batch_pairs=args.batch, progress=progress,
    )
    bar.close()
    for i, (a, b) in enumerate(pairs):
        a.save(out / f"{i:05d}_source.png")
        b.save(out / f"{i:05d}_edited.png")
    return {"pairs": len(pairs), "images": 2 * len(pairs)}


def run_inpaint(args: argparse.Namespace) -> dict:
    from PIL import Image, UnidentifiedImageError

    from pipeline.diffusion.grounding import box_mask
    from pipeline.diffusion.inpaint import inpaint
    from pipeline.diffusion.loading import load_pipeline

    rows = _rows(args.items, 3, "image<TAB>x0,y0,x1,y1<TAB>caption[<TAB>seed]")
    images, masks = [], []
    for i, r in enumerate(rows):
        try:
            image = Image.open(r[0]).convert("RGB")
        except (OSError, UnidentifiedImageError):
            raise ConfigError(f"{args.items}: row {i + 1}: cannot read image {r[0]}") from None
        try:
            box = tuple(int(v) for v in r[1].split(","))
        except ValueError:
            box = ()
        if len(box) != 4:
            raise ConfigError(f"{args.items}: row {i + 1}: box {r[1]!r} is not x0,y0,x1,y1")
        images.append(image)
        masks.append(box_mask(image.size, box))
    loaded = load_pipeline(args.pipeline, kind="inpaint", field="--pipeline")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar, progress = _progress(len(rows), "image")
    results = inpaint(
        loaded, images, masks, [r[2] for r in rows], [_seed(r, i, 3, args.items) for i, r in enumerate(rows)],
        steps=args.steps, guidance=args.guidance, dilate_px=args.dilate, batch_size=args.batch, progress=progress,
    )
    bar.close()
    for i, image in enumerate(results):
        image.save(out / f"{i:05d}_inpainted.png")
    return {"images": len(results)}


def main(argv: list[str] | None = None) -> int:
    # An entry point: no hub traffic, no tokenizer thread warnings (explicit settings win).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="python -m pipeline.diffusion", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, source, runner in (("p2p", "--prompts", run_p2p), ("inpaint", "--items", run_inpaint)):
        p = sub.add_parser(name)
        p.add_argument("--pipeline", required=True, help="diffusers folder, .safetensors/.ckpt file or tiny:<kind>")
        p.add_argument(source, required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--batch", type=int, default=4, help="pairs (p2p) or images (inpaint) per UNet call")
        p.add_argument("--steps", type=int, default=50)
        p.add_argument("--guidance", type=float, default=7.5)
        if name == "p2p":
            p.add_argument("--size", type=int, default=None)
        else:
            p.add_argument("--dilate", type=int, default=4)
        p.set_defaults(run=runner)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.steps < 1:
        print("error: --batch and --steps must be at least 1", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        summary = args.run(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary["seconds"] = round(time.perf_counter() - start, 3)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    from pipeline.core.shutdown import exit_quickly

    exit_quickly(main())
