"""Prompt-to-Prompt invariants on tiny pipelines: shared latents, the source untouched by the
control, one processor call per attention layer per step, and the token mapper's alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.diffusion import Prompt2PromptProcessor, generate_pairs, token_mapper
from pipeline.diffusion.p2p import build_mapper, count_attention_layers, initial_latents

SIZE, STEPS = 16, 2  # 16 px images, 8x8 latents: the smallest the tiny UNet takes


def arr(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("fixture", ["tiny_txt2img", "tiny_sdxl"])
def test_identical_prompts_give_identical_images_and_source_matches_plain_call(fixture, request):
    loaded = request.getfixturevalue(fixture)
    pairs = generate_pairs(
        loaded, ["a red apple on a table", "a cat on a mat"], ["a green apple on a table", "a cat on a mat"],
        seeds=[3, 4], steps=STEPS, size=SIZE,
    )
    (src0, edit0), (src1, edit1) = pairs
    assert src0.size == (SIZE, SIZE)
    assert np.array_equal(arr(src1), arr(edit1))  # same words, same latent: the same image
    assert not np.array_equal(arr(src0), arr(edit0))  # a different word changes the edit

    # The source is what a plain pipeline call from the same latent makes. The control computes
    # the source's attention explicitly (softmax, not the SDPA kernel): rounding may move a pixel
    # by one level, never more.
    latent = initial_latents(loaded, [3], SIZE, SIZE)
    with torch.inference_mode():
        plain = loaded.pipe(prompt=["a red apple on a table"], latents=latent, num_inference_steps=STEPS, guidance_scale=7.5, height=SIZE, width=SIZE).images[0]
    assert np.abs(arr(plain) - arr(src0)).max() <= 1

    uncontrolled = generate_pairs(loaded, ["a red apple on a table"], ["a green apple on a table"], seeds=[3], steps=STEPS, size=SIZE, attention_control=False)
    assert np.abs(arr(uncontrolled[0][0]) - arr(src0)).max() <= 1
    # The processor is taken off again: the UNet's own processors are back.
    assert all(type(p).__name__ != "Prompt2PromptProcessor" for p in loaded.pipe.unet.attn_processors.values())


def test_processor_runs_once_per_attention_layer_per_step(tiny_txt2img):
    loaded = tiny_txt2img
    unet = loaded.pipe.unet
    layers = {id(m) for m in unet.modules() if type(m).__name__ == "Attention"}
    num_layers = count_attention_layers(unet)
    assert num_layers == len(layers) > 0
    original = unet.attn_processors
    proc = Prompt2PromptProcessor(
        pairs=2, num_layers=num_layers, self_replace_steps=1, cross_replace_steps=3,
        mapper=build_mapper(loaded, ["a red apple", "a dog"], ["a blue apple", "a small dog"]), trace=True,
    )
    try:
        unet.set_attn_processor(proc)
        latent = initial_latents(loaded, [0, 1], SIZE, SIZE)
        with torch.inference_mode():
            loaded.pipe(prompt=["a red apple", "a dog", "a blue apple", "a small dog"], latents=torch.cat([latent, latent]),
                        num_inference_steps=3, guidance_scale=7.5, height=SIZE, width=SIZE)
    finally:
        unet.set_attn_processor(dict(original))
    assert proc.calls == 3 * num_layers
    assert proc.step == 3 and proc.layer == 0
    assert len(proc.trace) == 3
    for step in proc.trace:
        assert len(step) == num_layers and set(step) == layers  # each layer exactly once


def test_token_mapper_one_word_replacement(tiny_txt2img):
    tok = tiny_txt2img.pipe.tokenizer
    ids = lambda t: tok(t, padding="max_length", max_length=77).input_ids  # noqa: E731
    src, tgt = ids("a red apple"), ids("a green apple")
    mapper = token_mapper(src, tgt, tok.eos_token_id)
    assert len(mapper) == 77
    assert mapper[:5] == [0, 1, -1, 3, 4]  # <start> a [green: new] apple <end>
    assert mapper[5:] == list(range(5, 77))  # padding to padding
    for j, i in enumerate(mapper):
        if i >= 0:
            assert src[i] == tgt[j]


def test_token_mapper_word_insertion(tiny_txt2img):
    tok = tiny_txt2img.pipe.tokenizer
    ids = lambda t: tok(t, padding="max_length", max_length=77).input_ids  # noqa: E731
    src, tgt = ids("a apple on a table"), ids("a shiny red apple on a table")
    mapper = token_mapper(src, tgt, tok.eos_token_id)
    # <start> a [shiny] [red] apple on a table <end>: the words after the insertion shift by two
    assert mapper[:9] == [0, 1, -1, -1, 2, 3, 4, 5, 6]
    assert mapper[9:] == [7 + k for k in range(68)]  # the source's padding, in order
    assert all(src[i] == tgt[j] for j, i in enumerate(mapper) if i >= 0)


def test_generate_pairs_rejects_mismatched_lengths_and_inpaint_kind(tiny_txt2img, tiny_inpaint):
    from pipeline.core.stage import ConfigError

    with pytest.raises(ConfigError, match="differ in length"):
        generate_pairs(tiny_txt2img, ["a"], ["b", "c"], [0], steps=1, size=SIZE)
    with pytest.raises(ConfigError, match="neg_image.pipeline"):
        generate_pairs(tiny_inpaint, ["a"], ["b"], [0], steps=1, size=SIZE)
