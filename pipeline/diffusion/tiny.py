"""Tiny diffusers pipelines built in code, with random weights, for tests, the demo and benchmarks.

They have the shapes of the real ones (SD txt2img, SD inpainting with a 9-channel UNet, SDXL with
two text encoders and time conditioning) at a size that runs a few denoising steps in seconds on
a CPU. Weights are drawn from a fixed seed, so two builds in one or two processes are the same
model. The tokenizer is real: CLIP's BPE, built from the vocabulary open_clip ships, so token ids
match open_clip's tokenizer. Nothing here downloads anything. Images they make are noise-like and
must never be trained on (`LoadedPipeline.random_weights`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from pipeline.core.cache import default_cache_dir

TINY_PREFIX = "tiny:"
TINY_SEED = 0
# CLIP's BPE: line 0 of the bundled file is a header, then 48894 merges are the vocabulary's
# merges (the rest of the file is never used by CLIP's tokenizer).
CLIP_MERGES = 48894
CLIP_MAX_LENGTH = 77
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable characters (the BPE's base symbols)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars)))


def _bpe_file() -> Path:
    import open_clip

    return Path(open_clip.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")


def clip_tokenizer_dir() -> Path:
    """A folder with CLIP's fast tokenizer (`tokenizer.json` and the slow files), made once per
    machine from open_clip's bundled BPE and kept in foil's cache; later calls only read it.
    Converting the slow tokenizer to a fast one takes seconds, which is why it is cached."""
    source = _bpe_file()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    folder = default_cache_dir() / "tokenizers" / f"clip-bpe-{digest}"
    if (folder / "tokenizer.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    lines = gzip.open(source, "rt", encoding="utf-8").read().split("\n")[1 : CLIP_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    (work / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (work / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    from transformers import CLIPTokenizerFast

    tok = CLIPTokenizerFast(str(work / "vocab.json"), str(work / "merges.txt"), model_max_length=CLIP_MAX_LENGTH)
    tok.save_pretrained(str(work))
    try:
        os.replace(work, folder)  # atomic: a concurrent builder's finished copy wins, ours is dropped
    except OSError:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return folder


def clip_tokenizers() -> tuple[Any, Any]:
    """(slow CLIPTokenizer, fast CLIPTokenizerFast) over CLIP's BPE. The pipelines carry the slow
    one, as the released SD folders do; the fast one gives character offsets."""
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    folder = str(clip_tokenizer_dir())
    slow = CLIPTokenizer.from_pretrained(folder, model_max_length=CLIP_MAX_LENGTH, local_files_only=True)
    fast = CLIPTokenizerFast.from_pretrained(folder, model_max_length=CLIP_MAX_LENGTH, local_files_only=True)
    return slow, fast


def _text_encoder(with_projection: bool = False, hidden_size: int = 32) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=hidden_size, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5,
        vocab_size=49408, bos_token_id=49406, eos_token_id=49407, projection_dim=32,
        max_position_embeddings=CLIP_MAX_LENGTH,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def _vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], sample_size=64,
    ).eval()


def _ddim() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def _sd_unet(in_channels: int) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    ).eval()


def build_txt2img() -> Any:
    from diffusers import StableDiffusionPipeline

    slow, _ = clip_tokenizers()
    return StableDiffusionPipeline(
        unet=_sd_unet(4), scheduler=_ddim(), vae=_vae(), text_encoder=_text_encoder(), tokenizer=slow,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def build_inpaint() -> Any:
    from diffusers import StableDiffusionInpaintPipeline

    slow, _ = clip_tokenizers()
    return StableDiffusionInpaintPipeline(
        unet=_sd_unet(9), scheduler=_ddim(), vae=_vae(), text_encoder=_text_encoder(), tokenizer=slow,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def build_sdxl() -> Any:
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    slow, _ = clip_tokenizers()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
    ).eval()
    # 80 = 6 time ids x 8 + the second encoder's 32-d pooled projection; 64 = 32 + 32 hidden states.
    return StableDiffusionXLPipeline(
        unet=unet, scheduler=_ddim(), vae=_vae(), text_encoder=_text_encoder(), tokenizer=slow,
        text_encoder_2=_text_encoder(with_projection=True), tokenizer_2=slow, force_zeros_for_empty_prompt=True,
    )


# kind -> builder; `tiny:<kind>` names one.
TINY_BUILDERS: dict[str, Callable[[], Any]] = {
    "txt2img": build_txt2img,
    "inpaint": build_inpaint,
    "sdxl": build_sdxl,
}


def build_tiny(kind: str) -> Any:
    """A tiny pipeline of `kind`, the same weights at every call (seeded, then the global RNG
    state is restored so callers' own seeding is undisturbed)."""
    import torch

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(TINY_SEED)
        pipe = TINY_BUILDERS[kind]()
    finally:
        torch.random.set_rng_state(state)
    pipe.set_progress_bar_config(disable=True)
    return pipe
