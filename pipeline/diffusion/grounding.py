"""Where in a real image the edited words are: masks for inpainting, from a named method.

- `box`: the box given with the data, as a mask;
- `cross_attention`: the diffusion model's own cross-attention on the edited tokens. The image is
  VAE-encoded, noised to a middle timestep and passed once through the UNet with the caption; the
  attention every cross-attention layer pays to the tokens of the edited characters (found
  through the fast tokenizer's character offsets) is averaged over layers and heads, upsampled
  to the image and scaled to 0..1, then thresholded.

Methods are looked up by name in `GROUNDINGS` (another package may `register_grounding` its own,
e.g. the embed model's patch-text relevance); an unknown name is a ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pipeline.core.stage import ConfigError
from pipeline.diffusion.attention import attention_probs, finish, project
from pipeline.diffusion.loading import LoadedPipeline, fast_tokenizer

MIDDLE_TIMESTEP = 0.5  # fraction of the training schedule: noisy enough to read the layout, not lost
DEFAULT_THRESHOLD = 0.5


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """A bool mask [height, width] for an image of `size` (width, height), True inside
    [x0, y0, x1, y1) clipped to the image."""
    width, height = size
    x0, y0, x1, y1 = (int(v) for v in box)
    mask = np.zeros((height, width), dtype=bool)
    mask[max(0, y0) : max(0, min(height, y1)), max(0, x0) : max(0, min(width, x1))] = True
    return mask


def token_indices(loaded: LoadedPipeline, prompt: str, token_span: tuple[int, int]) -> list[int]:
    """Positions (in the padded 77-token sequence) of the tokens overlapping prompt[span]."""
    tok = fast_tokenizer(loaded)
    enc = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_offsets_mapping=True)
    a, b = token_span
    picked = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < b and e > a]
    if not picked:
        raise ConfigError(f"token_span: {token_span} covers no token of {prompt!r}")
    return picked


def _conditioning(loaded: LoadedPipeline, prompt: str, height: int, width: int) -> tuple[Any, dict[str, Any] | None]:
    """Text conditioning for one unguided UNet pass: (encoder_hidden_states, added_cond_kwargs)."""
    pipe = loaded.pipe
    if loaded.kind == "sdxl":
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompt, device=loaded.device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        time_ids = pipe._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=embeds.dtype,
            text_encoder_projection_dim=int(pipe.text_encoder_2.config.projection_dim),
        ).to(loaded.device)
        return embeds, {"text_embeds": pooled, "time_ids": time_ids}
    embeds, _ = pipe.encode_prompt(prompt, loaded.device, 1, False)
    return embeds, None


class CrossAttentionRecorder:
    """An attention processor that computes attention as usual and, on cross-attention layers,
    keeps the map of the chosen tokens: one [heads, tokens] tensor per layer."""

    def __init__(self, token_positions: list[int]) -> None:
        self.token_positions = token_positions
        self.maps: list[Any] = []

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None, temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        p = project(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        probs = attention_probs(attn, p.query, p.key, p.mask)  # [batch, heads, tokens, keys]
        if p.is_cross:
            self.maps.append(probs[0, :, :, self.token_positions].sum(-1).float())  # [heads, tokens] (batch 1)
        return finish(attn, probs @ p.value, p)


def cross_attention_maps(
    loaded: LoadedPipeline, image: Any, prompt: str, token_span: tuple[int, int], seed: int,
    timestep_fraction: float = MIDDLE_TIMESTEP, size: int | None = None,
) -> np.ndarray:
    """[H, W] float32 in 0..1 (H, W of `image`): how much the UNet's cross-attention looks at
    the tokens of prompt[token_span] at each pixel."""
    import torch
    import torch.nn.functional as F

    from pipeline.diffusion.p2p import default_size

    pipe, unet = loaded.pipe, loaded.pipe.unet
    positions = token_indices(loaded, prompt, token_span)
    side = size or default_size(loaded)
    rgb = image.convert("RGB").resize((side, side))
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    pixels = pixels.to(device=loaded.device, dtype=pipe.vae.dtype)
    original = unet.attn_processors
    recorder = CrossAttentionRecorder(positions)
    try:
        unet.set_attn_processor(recorder)
        with torch.inference_mode():
            latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=torch.Generator("cpu").manual_seed(int(seed))).to(latents)
            t = torch.tensor([int(timestep_fraction * pipe.scheduler.config.num_train_timesteps)], device=loaded.device)
            noisy = pipe.scheduler.add_noise(latents, noise, t).to(loaded.dtype)
            if unet.config.in_channels == 9:  # inpainting UNet: an empty mask and the whole image as context
                noisy = torch.cat([noisy, torch.zeros_like(noisy[:, :1]), latents.to(loaded.dtype)], dim=1)
            embeds, added = _conditioning(loaded, prompt, side, side)
            unet(noisy, t, encoder_hidden_states=embeds.to(loaded.dtype), added_cond_kwargs=added)
    finally:
        unet.set_attn_processor(dict(original))
    grids = []
    latent_side = latents.shape[-1]
    for m in recorder.maps:  # [heads, tokens]: square feature maps at 1/1, 1/2, ... of the latent
        n = int(round(m.shape[1] ** 0.5))
        grid = m.mean(0).reshape(1, 1, n, n)
        grids.append(F.interpolate(grid, size=(latent_side, latent_side), mode="bilinear", align_corners=False))
    mean = torch.cat(grids).mean(0, keepdim=True)
    full = F.interpolate(mean, size=(image.height, image.width), mode="bilinear", align_corners=False)[0, 0]
    low, high = float(full.min()), float(full.max())
    scaled = (full - low) / (high - low) if high > low else torch.zeros_like(full)
    return scaled.cpu().numpy().astype(np.float32)


@dataclass(frozen=True)
class GroundingQuery:
    """What a grounding method may use; each method says which fields it needs."""

    image: Any  # PIL image
    box: tuple[int, int, int, int] | None = None
    prompt: str | None = None
    token_span: tuple[int, int] | None = None
    seed: int = 0
    threshold: float = DEFAULT_THRESHOLD


def ground_box(query: GroundingQuery, loaded: LoadedPipeline | None) -> np.ndarray:
    if query.box is None:
        raise ConfigError("grounding 'box': the row has no box")
    return box_mask(query.image.size, query.box)


def ground_cross_attention(query: GroundingQuery, loaded: LoadedPipeline | None) -> np.ndarray:
    if loaded is None or query.prompt is None or query.token_span is None:
        raise ConfigError("grounding 'cross_attention': needs a pipeline, the caption and the edited token_span")
    heat = cross_attention_maps(loaded, query.image, query.prompt, query.token_span, query.seed)
    return heat >= query.threshold


GROUNDINGS: dict[str, Callable[[GroundingQuery, LoadedPipeline | None], np.ndarray]] = {
    "box": ground_box,
    "cross_attention": ground_cross_attention,
}


def register_grounding(name: str, method: Callable[[GroundingQuery, LoadedPipeline | None], np.ndarray]) -> None:
    if name in GROUNDINGS:
        raise ValueError(f"grounding {name!r} is already registered")
    GROUNDINGS[name] = method


def ground(name: str, query: GroundingQuery, loaded: LoadedPipeline | None = None, field: str = "neg_image.grounding") -> np.ndarray:
    """The bool mask [H, W] of the region to repaint, by the method called `name`."""
    method = GROUNDINGS.get(name)
    if method is None:
        raise ConfigError(f"{field}: unknown grounding {name!r} (one of: {', '.join(sorted(GROUNDINGS))})")
    return method(query, loaded)
