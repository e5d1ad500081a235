"""Inpainting a masked region of real images with a caption, composited onto the source.

An inpainting pipeline repaints inside the mask but also changes pixels outside it (its VAE
round trip alone does), so the output is pasted back: outside the mask, dilated by a few pixels
to give the repainted edge room, every pixel is the source's own.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pipeline.core.stage import ConfigError
from pipeline.diffusion.loading import LoadedPipeline

DEFAULT_BATCH = 4
# The pipeline works at sizes the VAE and UNet divide evenly.
SIZE_MULTIPLE = 8


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """`mask` grown by `pixels` in every direction (a square neighbourhood)."""
    if pixels <= 0:
        return mask.astype(bool)
    from PIL import Image, ImageFilter

    grown = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * pixels + 1))
    return np.asarray(grown) > 0


def composite(source: Any, generated: Any, mask: np.ndarray, dilate_px: int) -> Any:
    """`generated` inside the dilated mask, `source` exactly everywhere else (RGB, source size)."""
    from PIL import Image

    src = np.asarray(source.convert("RGB"))
    if mask.shape != src.shape[:2]:
        raise ConfigError(f"mask: shape {mask.shape} does not match the image ({src.shape[0]}, {src.shape[1]})")
    gen = generated.convert("RGB")
    if gen.size != source.size:
        gen = gen.resize(source.size, Image.BICUBIC)
    keep = dilate(mask, dilate_px)[:, :, None]
    return Image.fromarray(np.where(keep, np.asarray(gen), src))


def _working_size(image: Any) -> tuple[int, int]:
    w, h = image.size
    return max(SIZE_MULTIPLE, w - w % SIZE_MULTIPLE), max(SIZE_MULTIPLE, h - h % SIZE_MULTIPLE)


def inpaint(
    loaded: LoadedPipeline, images: list[Any], masks: list[np.ndarray], prompts: list[str], seeds: list[int],
    steps: int = 50, guidance: float = 7.5, dilate_px: int = 4, batch_size: int = DEFAULT_BATCH, progress: Any = None,
) -> list[Any]:
    """One composited image per input. Images of one working size are batched together."""
    import torch
    from PIL import Image

    if loaded.kind != "inpaint":
        raise ConfigError(f"neg_image.inpaint_pipeline: {loaded.id} is a {loaded.kind} pipeline, not an inpainting one")
    if not (len(images) == len(masks) == len(prompts) == len(seeds)):
        raise ConfigError(f"inpaint: images ({len(images)}), masks ({len(masks)}), prompts ({len(prompts)}) and seeds ({len(seeds)}) differ in length")
    for i, (image, mask) in enumerate(zip(images, masks)):
        if mask.shape != (image.height, image.width):
            raise ConfigError(f"inpaint: mask {i} has shape {mask.shape}, image {i} is {image.height}x{image.width}")
    check_images(images)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(_working_size(image), []).append(i)
    out: list[Any] = [None] * len(images)
    done = 0
    for (w, h), members in groups.items():
        for start in range(0, len(members), batch_size):
            idx = members[start : start + batch_size]
            with torch.inference_mode():
                generated = loaded.pipe(
                    prompt=[prompts[i] for i in idx],
                    image=[images[i].convert("RGB").resize((w, h), Image.BICUBIC) for i in idx],
                    mask_image=[Image.fromarray(masks[i].astype(np.uint8) * 255).resize((w, h), Image.NEAREST) for i in idx],
                    generator=[torch.Generator("cpu").manual_seed(int(seeds[i])) for i in idx],
                    num_inference_steps=steps, guidance_scale=guidance, height=h, width=w, output_type="pil",
                ).images
            for i, gen in zip(idx, generated):
                out[i] = composite(images[i], gen, masks[i], dilate_px)
            done += len(idx)
            if progress is not None:
                progress(done)
    return out


def pipeline_output_only(loaded: LoadedPipeline, image: Any, mask: np.ndarray, prompt: str, seed: int, steps: int, guidance: float = 7.5) -> Any:
    """The pipeline's raw output for one image, before compositing (what `composite` fixes)."""
    import torch
    from PIL import Image

    w, h = _working_size(image)
    with torch.inference_mode():
        return loaded.pipe(
            prompt=[prompt], image=[image.convert("RGB").resize((w, h))], mask_image=[Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h))],
            generator=[torch.Generator("cpu").manual_seed(int(seed))], num_inference_steps=steps, guidance_scale=guidance,
            height=h, width=w, output_type="pil",
        ).images[0]


def check_images(images: Sequence[Any]) -> None:
    for i, image in enumerate(images):
        if image.width < SIZE_MULTIPLE or image.height < SIZE_MULTIPLE:
            raise ConfigError(f"inpaint: image {i} is {image.width}x{image.height}, smaller than {SIZE_MULTIPLE} px")
