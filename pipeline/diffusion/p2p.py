"""Prompt-to-Prompt pairs: a source image from one caption and an edited image from another,
made from the same initial latent, so the two differ where the words differ.

One attention processor (`Prompt2PromptProcessor`, on diffusers' `AttnProcessor` interface) sits on
every attention layer of the UNet. The UNet batch holds the sources and the edits of several
pairs at once: [uncond sources | uncond edits | cond sources | cond edits] under classifier-free
guidance. Only the conditional edits are changed; everything else is computed as diffusers does,
so the source image is the one a plain pipeline call from that latent makes.

- self-attention, for the first `self_replace_fraction` of the steps: the edit attends with the
  source's maps (on layers of at most `self_replace_max_tokens` positions, as the original
  method does: the finest maps carry texture, not layout);
- cross-attention, for the first `cross_replace_fraction` of the steps: tokens the two captions
  share take the source's map (through a token mapper aligning the two token sequences); new
  tokens keep the edit's own.

Layers and steps are counted inside the processor: a step ends when every layer has run once.
"""

from __future__ import annotations

import difflib
from typing import Any, Sequence

from pipeline.core.stage import ConfigError
from pipeline.diffusion.attention import attend, attention_probs, finish, project
from pipeline.diffusion.loading import LoadedPipeline

P2P_KINDS = ("txt2img", "sdxl")
SELF_REPLACE_MAX_TOKENS = 32 * 32
DEFAULT_BATCH_PAIRS = 4


def token_mapper(source_ids: Sequence[int], target_ids: Sequence[int], eos_id: int) -> list[int]:
    """For each position of the target's token sequence, the source position holding the same
    token, or -1 for a token only the target has. Both are padded sequences of one length.

    The text tokens (start to end-of-text) are aligned by longest matching runs, so a replaced or
    inserted word shifts the tokens after it onto their source partners; padding positions map
    to the source's padding in order."""

    def text_length(ids: Sequence[int]) -> int:
        ids = list(ids)
        return ids.index(eos_id, 1) + 1 if eos_id in ids[1:] else len(ids)

    n_src, n_tgt = text_length(source_ids), text_length(target_ids)
    mapper = [-1] * len(target_ids)
    matcher = difflib.SequenceMatcher(a=list(source_ids[:n_src]), b=list(target_ids[:n_tgt]), autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            mapper[block.b + k] = block.a + k
    for j in range(n_tgt, len(target_ids)):
        i = n_src + (j - n_tgt)
        mapper[j] = i if i < len(source_ids) else -1
    return mapper


class Prompt2PromptProcessor:
    """The attention processor. One object serves every layer; it knows which step it is in by
    counting calls (`num_layers` per step).

    `mapper` is a LongTensor [pairs, tokens] from `token_mapper`. When `trace` is set, the ids of
    the layers called are recorded per step (tests check each layer runs once per step)."""

    def __init__(
        self, pairs: int, num_layers: int, self_replace_steps: int, cross_replace_steps: int, mapper: Any,
        self_replace_max_tokens: int = SELF_REPLACE_MAX_TOKENS, trace: bool = False,
    ) -> None:
        self.pairs = pairs
        self.num_layers = num_layers
        self.self_replace_steps = self_replace_steps
        self.cross_replace_steps = cross_replace_steps
        self.mapper = mapper
        self.self_replace_max_tokens = self_replace_max_tokens
        self.layer = 0
        self.step = 0
        self.calls = 0
        self._mappings: dict[str, tuple[Any, Any]] = {}
        self.trace: list[list[int]] | None = [] if trace else None

    def _mapping(self, device: Any) -> tuple[Any, Any]:
        """The mapper as [pairs, 1, 1, keys] (over heads and query tokens): source positions to
        gather (clamped) and where a target token has a source partner. Made once per device,
        not once per layer call."""
        key = str(device)
        if key not in self._mappings:
            mapper = self.mapper.to(device)[:, None, None, :]
            self._mappings[key] = (mapper.clamp(min=0), mapper >= 0)
        return self._mappings[key]

    def _advance(self, attn: Any) -> int:
        step = self.step
        if self.trace is not None:
            if len(self.trace) <= step:
                self.trace.append([])
            self.trace[step].append(id(attn))
        self.calls += 1
        self.layer += 1
        if self.layer == self.num_layers:  # every layer ran once: the next call is the next step
            self.layer = 0
            self.step += 1
        return step

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None, temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        import torch

        step = self._advance(attn)
        p = project(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        query, key, value, mask = p.query, p.key, p.value, p.mask  # [batch, heads, tokens or keys, head_dim]
        if p.is_cross:
            edit = step < self.cross_replace_steps
        else:
            edit = step < self.self_replace_steps and p.tokens <= self.self_replace_max_tokens
        if not edit:  # what diffusers' default processor computes, with the same kernel
            return finish(attn, attend(attn, query, key, value, mask), p)
        if p.batch % (2 * self.pairs) != 0:
            raise RuntimeError(f"prompt-to-prompt: batch {p.batch} is not a multiple of 2 x {self.pairs} pairs")

        # The conditional half is the last 2*pairs images (sources, then edits); an unguided
        # batch is all conditional. The unconditional half is computed as usual.
        cond = p.batch - 2 * self.pairs
        src, tgt = slice(cond, cond + self.pairs), slice(cond + self.pairs, cond + 2 * self.pairs)
        rows = lambda part: None if mask is None else mask[part]  # noqa: E731
        pieces = [attend(attn, query[:cond], key[:cond], value[:cond], rows(slice(0, cond)))] if cond else []
        if p.is_cross:
            # Tokens the captions share take the source's map; tokens only the edit has keep its own.
            probs_src = attention_probs(attn, query[src], key[src], rows(src))  # [pairs, heads, tokens, keys]
            probs_tgt = attention_probs(attn, query[tgt], key[tgt], rows(tgt))
            index, shared = self._mapping(query.device)  # [pairs, 1, 1, keys] each
            taken = probs_src.gather(-1, index.expand(-1, probs_src.shape[1], probs_src.shape[2], -1))
            pieces += [probs_src @ value[src], torch.where(shared, taken, probs_tgt) @ value[tgt]]
        else:
            # The edit lays out like the source: it attends with the source's self-attention maps.
            # One SDPA call over [source values | edit values] gives both outputs without
            # materialising the maps, and the edit's own query-key product is skipped.
            dim = value.shape[-1]
            both = attend(attn, query[src], key[src], torch.cat([value[src], value[tgt]], dim=-1), rows(src))  # [pairs, heads, tokens, 2*dim]
            pieces += [both[..., :dim], both[..., dim:]]
        return finish(attn, torch.cat(pieces), p)


def initial_latents(loaded: LoadedPipeline, seeds: Sequence[int], height: int, width: int) -> Any:
    """One initial latent per seed, drawn on the CPU so a seed gives the same latent on any
    device: [len(seeds), C, height / f, width / f]."""
    import torch

    pipe = loaded.pipe
    factor = pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels if loaded.kind != "inpaint" else pipe.vae.config.latent_channels, height // factor, width // factor)
    rows = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s)), dtype=torch.float32) for s in seeds]
    return torch.cat(rows).to(device=loaded.device, dtype=loaded.dtype)


def default_size(loaded: LoadedPipeline) -> int:
    return int(loaded.pipe.unet.config.sample_size * loaded.pipe.vae_scale_factor)


def count_attention_layers(unet: Any) -> int:
    # attn_processors builds a fresh dict; counting before set_attn_processor matters because
    # set_attn_processor(dict) pops the entries of the dict it is given.
    return len(unet.attn_processors)


def _check_pairs(prompts: Sequence[str], edited_prompts: Sequence[str], seeds: Sequence[int]) -> None:
    if not (len(prompts) == len(edited_prompts) == len(seeds)):
        raise ConfigError(f"generate_pairs: prompts ({len(prompts)}), edited_prompts ({len(edited_prompts)}) and seeds ({len(seeds)}) differ in length")


def build_mapper(loaded: LoadedPipeline, prompts: Sequence[str], edited_prompts: Sequence[str]) -> Any:
    import torch

    tok = loaded.pipe.tokenizer
    ids = lambda texts: tok(list(texts), padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids  # noqa: E731
    rows = [token_mapper(a, b, tok.eos_token_id) for a, b in zip(ids(prompts), ids(edited_prompts))]
    return torch.tensor(rows, dtype=torch.long)


def generate_pairs(
    loaded: LoadedPipeline, prompts: list[str], edited_prompts: list[str], seeds: list[int], steps: int = 50,
    guidance: float = 7.5, self_replace_fraction: float = 0.4, cross_replace_fraction: float = 1.0,
    size: int | None = None, batch_pairs: int = DEFAULT_BATCH_PAIRS, attention_control: bool = True,
    self_replace_max_tokens: int = SELF_REPLACE_MAX_TOKENS, progress: Any = None,
) -> list[tuple[Any, Any]]:
    """(source, edited) PIL images per pair, `batch_pairs` pairs per UNet call.

    `attention_control=False` makes the same two images from the shared latent without the
    processor (what Prompt-to-Prompt is compared with). `progress`, if given, is called with the
    number of pairs done after each batch."""
    import torch

    if loaded.kind not in P2P_KINDS:
        raise ConfigError(f"neg_image.pipeline: {loaded.id} is a {loaded.kind} pipeline; prompt-to-prompt needs {' or '.join(P2P_KINDS)}")
    _check_pairs(prompts, edited_prompts, seeds)
    size = size or default_size(loaded)
    pipe, unet = loaded.pipe, loaded.pipe.unet
    num_layers = count_attention_layers(unet)
    original = unet.attn_processors
    out: list[tuple[Any, Any]] = []
    try:
        for start in range(0, len(prompts), batch_pairs):
            src = list(prompts[start : start + batch_pairs])
            tgt = list(edited_prompts[start : start + batch_pairs])
            latent = initial_latents(loaded, seeds[start : start + batch_pairs], size, size)
            if attention_control:
                unet.set_attn_processor(Prompt2PromptProcessor(
                    pairs=len(src), num_layers=num_layers, self_replace_steps=int(self_replace_fraction * steps),
                    cross_replace_steps=int(cross_replace_fraction * steps), mapper=build_mapper(loaded, src, tgt),
                    self_replace_max_tokens=self_replace_max_tokens,
                ))
            with torch.inference_mode():
                images = pipe(
                    prompt=src + tgt, latents=torch.cat([latent, latent]), num_inference_steps=steps,
                    guidance_scale=guidance, height=size, width=size, output_type="pil",
                ).images
            out.extend(zip(images[: len(src)], images[len(src) :]))
            if progress is not None:
                progress(len(out))
    finally:
        unet.set_attn_processor(dict(original))
    return out
