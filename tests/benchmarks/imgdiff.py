"""Img-Diff benchmark: throughput of the pair filter + Difference Area Generator on CPU, their
accuracy on real emoji pairs, and (on a GPU) pair generation with a full-size SDXL UNet.

    .venv/bin/python tests/benchmarks/imgdiff.py cpu [--pairs 300] [--runs 3] [--model foil-effnet-lite0-minilm]
    .venv/bin/python tests/benchmarks/imgdiff.py gpu [--size 1024] [--steps 50] [--pairs 8] [--batch-pairs 2]
    .venv/bin/python tests/benchmarks/imgdiff.py gpu --tiny      # the same code path at a tiny size, on CPU

`cpu` times `ImgDiffStep.analyse` (PNG bytes in: decode, whole-image similarity, difference
areas, captions, decision; what `foil imgdiff` runs per batch) on rendered pairs of two sizes
and on the 1,683 real emoji variant pairs, with the pixel scorer and with an embed model, and
scores the boxes on the real pairs against their true changed pixels (median coverage and IoU
over all of them). `gpu` builds SDXL-base's UNet, VAE and both text encoders from their configs
with random weights (no download; the same compute as the real weights), generates
Prompt-to-Prompt pairs in bf16 and reports pairs/s and peak GPU memory, then runs the analysis on
what it made. Random weights make noise-like images, so only the speed means anything there.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from flows.environment import apply_defaults  # noqa: E402

apply_defaults()

from pipeline.core import schema as S  # noqa: E402
from pipeline.demo.sample import IMAGE_SUBDIR, fetch_emoji_sample  # noqa: E402
from pipeline.imgdiff.areas import difference_map, region_agreement  # noqa: E402
from pipeline.imgdiff.emoji_pairs import emoji_variant_pairs  # noqa: E402
from pipeline.imgdiff.stage import ImgDiffStep, empty_analysis, png  # noqa: E402
from pipeline.imgdiff.synthetic import render_pair  # noqa: E402
from pipeline.models.images import on_white  # noqa: E402


def pairs_table(images: list[tuple[bytes, bytes]], captions: list[tuple[str, str]]) -> pa.Table:
    n = len(images)
    return pa.Table.from_pydict({
        S.PAIR_ID: [f"{i:016x}" for i in range(n)], S.SAMPLE_ID: [None] * n,
        S.CAPTION_A: [a for a, _ in captions], S.CAPTION_B: [b for _, b in captions],
        S.OBJECT_A: [None] * n, S.OBJECT_B: [None] * n, S.METHOD: ["import"] * n, S.SEED: [None] * n, S.PIPELINE: [None] * n,
        **empty_analysis(n), S.TRAINABLE: [True] * n,
        S.IMAGE_A: [a for a, _ in images], S.IMAGE_B: [b for _, b in images],
    }, schema=S.IMGDIFF_SCHEMA)


def synthetic_table(n: int, size: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rendered = [render_pair(rng, size=size) for _ in range(n)]
    return pairs_table([(png(Image.fromarray(p.image_a)), png(Image.fromarray(p.image_b))) for p in rendered],
                       [(f"a {p.object_a}", f"a {p.object_b}") for p in rendered])


def time_analyse(step: ImgDiffStep, table: pa.Table, runs: int, batch: int = 64) -> dict:
    step.analyse(table.slice(0, min(8, table.num_rows)))  # warm-up: the model loads here, not in the timing
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        for offset in range(0, table.num_rows, batch):
            step.analyse(table.slice(offset, batch))
        seconds.append(time.perf_counter() - start)
    rates = [table.num_rows / s for s in seconds]
    return {"pairs": table.num_rows, "runs": runs, "pairs_per_s_median": round(statistics.median(rates), 1),
            "pairs_per_s_min": round(min(rates), 1), "pairs_per_s_max": round(max(rates), 1)}


def emoji_accuracy(sample: Path, step: ImgDiffStep) -> dict:
    """Median coverage of the changed pixels by the union of boxes, and IoU of that union with the
    changed region's bounding box, over every emoji variant pair that differs at all."""
    coverage, iou, identical, no_box = [], [], 0, 0
    for p in emoji_variant_pairs(sample):
        a, b = (np.asarray(on_white(Image.open(sample / IMAGE_SUBDIR / p[k]))) for k in ("image_a", "image_b"))
        truth = difference_map(a, b) > 8 / 255
        if not truth.any():
            identical += 1
            continue
        boxes = step.areas.find(a, b, step.scorer).boxes
        no_box += not boxes
        c, i = region_agreement(boxes, truth)
        coverage.append(c)
        iou.append(i)
    return {"pairs": len(coverage), "identical_skipped": identical, "pairs_without_box": no_box,
            "median_coverage": round(float(np.median(coverage)), 4), "median_iou": round(float(np.median(iou)), 4),
            "p10_coverage": round(float(np.percentile(coverage, 10)), 4), "p10_iou": round(float(np.percentile(iou, 10)), 4)}


def run_cpu(args: argparse.Namespace) -> dict:
    sample = fetch_emoji_sample()
    pixel = ImgDiffStep(progress=False)
    out: dict = {"scorer_pixel": {}, "accuracy_emoji_pairs": emoji_accuracy(sample, pixel)}
    emoji = emoji_variant_pairs(sample)
    real = pairs_table([((sample / IMAGE_SUBDIR / p["image_a"]).read_bytes(), (sample / IMAGE_SUBDIR / p["image_b"]).read_bytes()) for p in emoji],
                       [(p["caption_a"], p["caption_b"]) for p in emoji])
    tables = {"synthetic_128px": synthetic_table(args.pairs, 128), "synthetic_512px": synthetic_table(max(20, args.pairs // 8), 512),
              "emoji_64px": real}
    for name, table in tables.items():
        out["scorer_pixel"][name] = time_analyse(pixel, table, args.runs)
        print(name, "pixel", out["scorer_pixel"][name], flush=True)
    if args.model:
        model = ImgDiffStep(model=args.model, progress=False)
        key = f"scorer_{args.model}"
        out[key] = {}
        for name, table in tables.items():
            subset = table.slice(0, max(16, args.pairs // 4))
            out[key][name] = time_analyse(model, subset, args.runs)
            print(name, args.model, out[key][name], flush=True)
    return out


def sdxl_pipeline(tiny: bool, device: str):
    """SDXL-base's architecture from its configs with random weights (`tiny`: the same block
    structure at a laptop size), as a LoadedPipeline that generate_pairs accepts."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipeline.diffusion import LoadedPipeline
    from pipeline.diffusion.tiny import clip_tokenizers

    torch.manual_seed(0)
    if tiny:
        widths, heads, layers, text = (32, 64, 64), (2, 4, 4), (1, 1, 2), ((32, 37, 2, 4, 32), (32, 37, 2, 4, 32))
        vae_widths, time_dim = [32, 64], 8
    else:
        # stabilityai/stable-diffusion-xl-base-1.0: unet/config.json, vae/config.json, text_encoder{,_2}/config.json
        widths, heads, layers = (320, 640, 1280), (5, 10, 20), (1, 2, 10)
        text = ((768, 3072, 12, 12, 768), (1280, 5120, 32, 20, 1280))  # hidden, intermediate, layers, heads, projection
        vae_widths, time_dim = [128, 256, 512, 512], 256
    encoders = []
    for i, (hidden, inter, n_layers, n_heads, proj) in enumerate(text):
        cfg = CLIPTextConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                             projection_dim=proj, vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                             hidden_act="quick_gelu" if i == 0 else "gelu")
        encoders.append((CLIPTextModel if i == 0 else CLIPTextModelWithProjection)(cfg).eval())
    cross = text[0][0] + text[1][0]
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=widths,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=layers, attention_head_dim=heads, cross_attention_dim=cross, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + text[1][4],
    ).eval()
    vae = AutoencoderKL(
        block_out_channels=vae_widths, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        down_block_types=["DownEncoderBlock2D"] * len(vae_widths), up_block_types=["UpDecoderBlock2D"] * len(vae_widths),
        scaling_factor=0.13025, sample_size=1024,
    ).eval()
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1)
    slow, _ = clip_tokenizers()
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=slow, tokenizer_2=slow,
                                     unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    unet_params = sum(p.numel() for p in unet.parameters())
    return LoadedPipeline(pipe=pipe, id="sdxl-base-config:random" if not tiny else "sdxl-tiny-config:random", kind="sdxl",
                          random_weights=True, device=device, dtype=dtype), unet_params


PROMPTS = [("a red apple on a wooden table", "a green apple on a wooden table"), ("a cat sitting on a sofa", "a dog sitting on a sofa"),
           ("a blue car parked in a street", "a red car parked in a street"), ("a cup of coffee next to a book", "a cup of tea next to a book")]


def run_gpu(args: argparse.Namespace) -> dict:
    import torch

    from pipeline.diffusion import generate_pairs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        raise SystemExit("no GPU here: run with --tiny to check the code path on CPU")
    start = time.perf_counter()
    loaded, unet_params = sdxl_pipeline(args.tiny, device)
    build_s = time.perf_counter() - start
    size = 64 if args.tiny else args.size
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.pairs)]
    seeds = list(range(args.pairs))
    generate = lambda n: generate_pairs(loaded, [a for a, _ in prompts[:n]], [b for _, b in prompts[:n]], seeds[:n], steps=args.steps,
                                        guidance=7.5, size=size, batch_pairs=args.batch_pairs)
    generate(min(args.batch_pairs, args.pairs))  # warm-up (kernels, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    images = generate(args.pairs)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(loaded.dtype), "unet_parameters": unet_params,
           "size": size, "steps": args.steps, "pairs": args.pairs, "batch_pairs": args.batch_pairs, "build_seconds": round(build_s, 1),
           "generate_seconds": round(seconds, 2), "pairs_per_s": round(args.pairs / seconds, 4),
           "images_per_s": round(2 * args.pairs / seconds, 4)}
    if device == "cuda":
        out["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    table = pairs_table([(png(a), png(b)) for a, b in images], prompts)
    out["analysis_pixel"] = time_analyse(ImgDiffStep(progress=False), table, runs=1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    cpu = sub.add_parser("cpu")
    cpu.add_argument("--pairs", type=int, default=300, help="rendered 128 px pairs (512 px: an eighth as many)")
    cpu.add_argument("--runs", type=int, default=3)
    cpu.add_argument("--model", default="foil-effnet-lite0-minilm", help="embed model to time as scorer ('' for none)")
    gpu = sub.add_parser("gpu")
    gpu.add_argument("--tiny", action="store_true", help="tiny configs on CPU: checks the code path, no meaningful figure")
    gpu.add_argument("--size", type=int, default=1024)
    gpu.add_argument("--steps", type=int, default=50)
    gpu.add_argument("--pairs", type=int, default=8)
    gpu.add_argument("--batch-pairs", type=int, default=2)
    gpu.add_argument("--out", help="also write the result as JSON here")
    args = parser.parse_args()
    result = run_cpu(args) if args.mode == "cpu" else run_gpu(args)
    text = json.dumps(result, indent=2)
    print(text)
    if getattr(args, "out", None):
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
