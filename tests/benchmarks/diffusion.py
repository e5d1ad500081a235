"""Diffusion throughput: foil's Prompt-to-Prompt pairs and inpainting against a plain diffusers
loop over the same pipeline, inputs and batch, as whole commands side by side (start-up included).

One tiny pipeline of each kind (random weights, built in code) is saved to a folder once; both
sides load that folder. Each run times, in a fresh process each:

- p2p, foil: `python -m pipeline.diffusion p2p` (the Prompt-to-Prompt processor on every
  attention layer, `--batch` pairs = 2 x batch images per UNet call, one shared latent per pair);
- p2p, plain: `StableDiffusionPipeline(prompt=[sources + edits], latents=[shared latents])`, the
  same 2 x batch images per call, no attention control;
- inpaint, foil: `python -m pipeline.diffusion inpaint` (pipeline, then the composite);
- inpaint, plain: `StableDiffusionInpaintPipeline(prompt, image, mask_image, generator)` per batch.

Both foil commands end with `exit_quickly` (pipeline/core/shutdown.py): atexit callbacks, a
flush, then no interpreter teardown. To show what that part is worth, each foil command is also
timed with `FOIL_FULL_EXIT=1` (an ordinary exit, as the plain loop has).

Prints images/s per command (median and min-max over `--runs`, start-up included) and the ratios
foil / plain of the medians, with and without the quick exit. The foil side is the generation
core of `foil neg-image`, not the stage: the stage also reads a dataset, scores every image with
the embed model and writes tables, which the plain loop does not do.

    .venv/bin/python tests/benchmarks/diffusion.py [--pairs 16 --batch 4 --steps 4 --size 32 --runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FULL_EXIT_ENV = "FOIL_FULL_EXIT"  # pipeline/core/shutdown.py
FULL_EXIT = "foil (full exit)"
SUBJECTS = ["apple", "cat", "car", "house", "tree", "heart", "ball", "cup"]
COLOURS = ["red", "green", "blue", "yellow"]


def write_inputs(work: Path, pairs: int, size: int) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image

    lines = []
    for i in range(pairs):
        subject, a, b = SUBJECTS[i % len(SUBJECTS)], COLOURS[i % len(COLOURS)], COLOURS[(i + 1) % len(COLOURS)]
        lines.append(f"a {a} {subject} on a table\ta {b} {subject} on a table\t{i}")
    prompts = work / "pairs.tsv"
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rng = np.random.default_rng(0)
    items = []
    for i in range(pairs):
        img = np.full((size, size, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        x0, y0 = int(rng.integers(0, size // 2)), int(rng.integers(0, size // 2))
        img[y0 : y0 + size // 3, x0 : x0 + size // 3] = rng.integers(0, 256, 3)
        path = work / f"scene_{i:04d}.png"
        Image.fromarray(img).save(path)
        items.append(f"{path}\t{x0},{y0},{x0 + size // 3},{y0 + size // 3}\ta {COLOURS[i % 4]} {SUBJECTS[i % 8]}\t{i}")
    item_file = work / "items.tsv"
    item_file.write_text("\n".join(items) + "\n", encoding="utf-8")
    return prompts, item_file


def plain_worker(argv: list[str]) -> None:
    """The plain diffusers loop, run as its own process: what a user writes without foil."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["p2p", "inpaint"])
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    import numpy as np
    import torch
    from PIL import Image

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [line.split("\t") for line in Path(args.inputs).read_text(encoding="utf-8").splitlines() if line]
    images = 0
    if args.mode == "p2p":
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(args.pipeline, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        side = args.size // pipe.vae_scale_factor
        for s in range(0, len(rows), args.batch):
            chunk = rows[s : s + args.batch]
            latents = torch.cat([torch.randn((1, 4, side, side), generator=torch.Generator("cpu").manual_seed(int(r[2]))) for r in chunk])
            result = pipe(prompt=[r[0] for r in chunk] + [r[1] for r in chunk], latents=torch.cat([latents, latents]),
                          num_inference_steps=args.steps, guidance_scale=7.5, height=args.size, width=args.size).images
            for k, r in enumerate(chunk):
                result[k].save(out / f"{s + k:05d}_source.png")
                result[len(chunk) + k].save(out / f"{s + k:05d}_edited.png")
            images += len(result)
    else:
        from diffusers import StableDiffusionInpaintPipeline

        pipe = StableDiffusionInpaintPipeline.from_pretrained(args.pipeline, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        for s in range(0, len(rows), args.batch):
            chunk = rows[s : s + args.batch]
            sources = [Image.open(r[0]).convert("RGB") for r in chunk]
            masks = []
            for r, img in zip(chunk, sources):
                x0, y0, x1, y1 = (int(v) for v in r[1].split(","))
                m = np.zeros((img.height, img.width), dtype=np.uint8)
                m[y0:y1, x0:x1] = 255
                masks.append(Image.fromarray(m))
            result = pipe(prompt=[r[2] for r in chunk], image=sources, mask_image=masks,
                          generator=[torch.Generator("cpu").manual_seed(int(r[3])) for r in chunk],
                          num_inference_steps=args.steps, guidance_scale=7.5, height=args.size, width=args.size).images
            for k, image in enumerate(result):
                image.save(out / f"{s + k:05d}_inpainted.png")
            images += len(result)
    print(json.dumps({"images": images, "seconds": round(time.perf_counter() - start, 3)}))


def _child_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], expect_images: int, out: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child). On a shared machine the CPU figure is the
    steadier one: it does not count time spent waiting for a core."""
    shutil.rmtree(out, ignore_errors=True)
    cpu = _child_cpu()
    start = time.perf_counter()
    inherited = {k: v for k, v in os.environ.items() if k != FULL_EXIT_ENV}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**inherited, **env})
    seconds = time.perf_counter() - start
    cpu = _child_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    written = len(list(out.glob("*.png")))
    if written != expect_images:
        raise SystemExit(f"{cmd[2:4]}: wrote {written} images, expected {expect_images}")
    return seconds, cpu


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--plain":
        plain_worker(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16, help="p2p pairs (2 images each) and inpaint images")
    parser.add_argument("--batch", type=int, default=4, help="pairs (p2p) or images (inpaint) per UNet call")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["p2p", "inpaint"], choices=["p2p", "inpaint"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    from pipeline.diffusion.tiny import build_tiny

    py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="foil-bench-diffusion-"))
    try:
        folders = {"p2p": work / "tiny-txt2img", "inpaint": work / "tiny-inpaint"}
        build_tiny("txt2img").save_pretrained(folders["p2p"])
        build_tiny("inpaint").save_pretrained(folders["inpaint"])
        prompts, items = write_inputs(work, args.pairs, args.size)
        common = ["--batch", str(args.batch), "--steps", str(args.steps)]
        commands = {
            ("p2p", "foil"): ([py, "-m", "pipeline.diffusion", "p2p", "--pipeline", str(folders["p2p"]), "--prompts", str(prompts), "--out", str(work / "out"), "--size", str(args.size), *common], 2 * args.pairs),
            ("p2p", "plain"): ([py, __file__, "--plain", "p2p", "--pipeline", str(folders["p2p"]), "--inputs", str(prompts), "--out", str(work / "out"), "--size", str(args.size), *common], 2 * args.pairs),
            ("inpaint", "foil"): ([py, "-m", "pipeline.diffusion", "inpaint", "--pipeline", str(folders["inpaint"]), "--items", str(items), "--out", str(work / "out"), *common], args.pairs),
            ("inpaint", "plain"): ([py, __file__, "--plain", "inpaint", "--pipeline", str(folders["inpaint"]), "--inputs", str(items), "--out", str(work / "out"), "--size", str(args.size), *common], args.pairs),
        }
        for mode in ("p2p", "inpaint"):
            commands[(mode, FULL_EXIT)] = commands[(mode, "foil")]
        envs = {key: ({FULL_EXIT_ENV: "1"} if key[1] == FULL_EXIT else {}) for key in commands}
        seconds: dict[tuple[str, str], list[float]] = {key: [] for key in commands if key[0] in args.modes}
        cpu: dict[tuple[str, str], list[float]] = {key: [] for key in seconds}
        for run in range(args.runs):
            for key in seconds:  # interleaved, so a load change on the machine hits every side
                cmd, n = commands[key]
                wall, used = timed(cmd, n, work / "out", envs[key])
                seconds[key].append(wall)
                cpu[key].append(used)
                print(f"run {run + 1}/{args.runs} {key[0]:8s}{key[1]:17s}{wall:7.1f} s wall {used:7.1f} s CPU", file=sys.stderr)
        print(f"\ntiny pipelines (random weights), CPU, {args.size} px, {args.steps} steps, batch {args.batch}, {args.runs} runs, start-up included")
        for mode in args.modes:
            n = commands[(mode, "foil")][1]
            for label, table in (("wall", seconds), ("CPU", cpu)):
                rates = {}
                for side in ("foil", FULL_EXIT, "plain"):
                    s = table[(mode, side)]
                    rates[side] = n / statistics.median(s)
                    print(f"{mode:8s}{side:17s}{n:4d} images  {rates[side]:6.3f} images/{label}-s  (median {statistics.median(s):.1f} s, min {min(s):.1f}, max {max(s):.1f})")
                print(f"{mode:8s}ratio foil / plain ({label}): {rates['foil'] / rates['plain']:.2f}; "
                      f"with an ordinary exit: {rates[FULL_EXIT] / rates['plain']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
