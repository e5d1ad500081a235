"""Prompt-to-Prompt throughput at real model sizes on a GPU: SD-1.5 at 512 px and SDXL at 1024 px.

Full-size pipelines are built in code from the published architectures (UNet, VAE, CLIP text
encoders, CLIP's real BPE tokenizer) with random weights: nothing is downloaded, and the compute
per step is the real models'. The images are noise; only speed and memory are measured. Each
model runs `generate_pairs` (foil's attention processor, shared latents, `--batch` pairs per UNet
call) once to warm up, then `--repeats` times timed, in bf16; it prints images/s and the peak GPU
memory (`torch.cuda.max_memory_allocated`).

    .venv/bin/python tests/benchmarks/diffusion_gpu.py [--steps 50 --batch 4 --repeats 2]
    .venv/bin/python tests/benchmarks/diffusion_gpu.py --dry-run   # CPU: tiny sizes through the same path

`--dry-run` also builds both full-size UNets on the meta device (no memory) and checks their
parameter counts against the released models', so the configs below are known to be right.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, projection_dim=768)
CLIP_BIGG_TEXT = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32, projection_dim=1280, hidden_act="gelu")
# Released parameter counts (diffusers' UNet2DConditionModel of each model).
UNET_PARAMS = {"sd15": 859_520_964, "sdxl": 2_567_463_684}


def _text(cfg: dict, with_projection: bool) -> object:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, **cfg)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def build_full(model: str, device: str, dtype: object) -> object:
    """A full-size random-weight pipeline, made directly on `device` in `dtype`."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

    from pipeline.diffusion.tiny import clip_tokenizers

    slow, _ = clip_tokenizers()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    torch.manual_seed(0)
    with torch.device(device):
        if model == "sd15":
            pipe = StableDiffusionPipeline(
                unet=UNet2DConditionModel(**SD15_UNET), vae=AutoencoderKL(**VAE, sample_size=512), text_encoder=_text(CLIP_L_TEXT, False),
                tokenizer=slow, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
        else:
            pipe = StableDiffusionXLPipeline(
                unet=UNet2DConditionModel(**SDXL_UNET), vae=AutoencoderKL(**VAE, sample_size=1024, scaling_factor=0.13025),
                text_encoder=_text(CLIP_L_TEXT, False), text_encoder_2=_text(CLIP_BIGG_TEXT, True), tokenizer=slow, tokenizer_2=slow,
                scheduler=scheduler,
            )
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_full_configs() -> None:
    import torch
    from diffusers import UNet2DConditionModel

    for name, cfg in (("sd15", SD15_UNET), ("sdxl", SDXL_UNET)):
        with torch.device("meta"):
            unet = UNet2DConditionModel(**cfg)
        n = sum(p.numel() for p in unet.parameters())
        status = "ok" if n == UNET_PARAMS[name] else f"MISMATCH (released {UNET_PARAMS[name]:,})"
        print(f"{name} UNet from config: {n:,} parameters, {status}")
        if n != UNET_PARAMS[name]:
            raise SystemExit(1)


def measure(label: str, loaded: object, size: int, steps: int, batch: int, repeats: int) -> None:
    import torch

    from pipeline.diffusion.p2p import generate_pairs

    prompts = [f"a photo of a red {w} on a wooden table" for w in ("apple", "car", "cup", "ball", "chair", "bird", "lamp", "shoe")]
    edits = [p.replace("red", "blue") for p in prompts]
    src, tgt = (prompts * batch)[:batch], (edits * batch)[:batch]
    cuda = loaded.device.startswith("cuda")
    generate_pairs(loaded, src, tgt, list(range(batch)), steps=min(steps, 2), size=size, batch_pairs=batch)  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for r in range(repeats):
        pairs = generate_pairs(loaded, src, tgt, [r * batch + i for i in range(batch)], steps=steps, size=size, batch_pairs=batch)
        assert len(pairs) == batch and pairs[0][0].size == (size, size)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    images = 2 * batch * repeats
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB peak" if cuda else "CPU (no GPU memory figure)"
    print(f"{label:28s}{size:5d} px  {steps} steps  batch {batch} pairs  {images / seconds:7.3f} images/s  {peak}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4, help="pairs per UNet call (2x images, 4x with guidance)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny pipelines, 2 steps: checks the path, measures nothing real")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import torch

    from pipeline.diffusion.loading import LoadedPipeline, load_pipeline

    if args.dry_run:
        check_full_configs()
        for model, kind in (("sd15", "txt2img"), ("sdxl", "sdxl")):
            if model in args.models:
                measure(f"{model} (dry run: tiny:{kind})", load_pipeline(f"tiny:{kind}", device="cpu"), 32, 2, 2, 1)
        return
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run to check the path on a CPU")
    dtype = torch.bfloat16
    print(torch.cuda.get_device_name(0), "bf16", flush=True)
    for model, size, kind in (("sd15", 512, "txt2img"), ("sdxl", 1024, "sdxl")):
        if model not in args.models:
            continue
        start = time.perf_counter()
        pipe = build_full(model, "cuda", dtype)
        print(f"{model}: built in {time.perf_counter() - start:.1f} s, UNet {sum(p.numel() for p in pipe.unet.parameters()):,} parameters", flush=True)
        loaded = LoadedPipeline(pipe=pipe, id=f"random:{model}", kind=kind, random_weights=True, device="cuda", dtype=dtype)
        measure(f"{model} p2p (random weights)", loaded, size, args.steps, args.batch, args.repeats)
        del loaded, pipe
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
