"""Loading: tiny pipelines build; a saved folder reloads offline to the same model; bad specs
are one-line errors naming the field; the whole-process entry runs and reports bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.core.stage import ConfigError
from pipeline.diffusion import PipelineCache, load_pipeline
from pipeline.diffusion.__main__ import main
from pipeline.diffusion.p2p import initial_latents


def test_tiny_kinds_build(tiny_txt2img, tiny_inpaint, tiny_sdxl):
    for loaded, kind, cls in ((tiny_txt2img, "txt2img", "StableDiffusionPipeline"), (tiny_inpaint, "inpaint", "StableDiffusionInpaintPipeline"), (tiny_sdxl, "sdxl", "StableDiffusionXLPipeline")):
        assert loaded.id == f"tiny:{kind}" and loaded.kind == kind and loaded.random_weights
        assert type(loaded.pipe).__name__ == cls
        assert loaded.device == "cpu" and loaded.dtype == torch.float32
    assert tiny_inpaint.pipe.unet.config.in_channels == 9
    # Seeded: a second build is the same model.
    again = load_pipeline("tiny:txt2img", device="cpu")
    assert torch.equal(again.pipe.unet.conv_in.weight, tiny_txt2img.pipe.unet.conv_in.weight)


def test_saved_folder_reloads_offline_with_the_same_images(tiny_txt2img, tmp_path):
    tiny_txt2img.pipe.save_pretrained(tmp_path / "sd")
    loaded = load_pipeline(str(tmp_path / "sd"), device="cpu")
    assert loaded.kind == "txt2img" and not loaded.random_weights and loaded.id == str(tmp_path / "sd")
    latent = initial_latents(loaded, [7], 16, 16)
    images = []
    for p in (tiny_txt2img, loaded):
        with torch.inference_mode():
            images.append(np.asarray(p.pipe(prompt=["a cat"], latents=latent.clone(), num_inference_steps=2, height=16, width=16).images[0]))
    assert np.array_equal(images[0], images[1])
    with pytest.raises(ConfigError, match="holds a txt2img pipeline"):
        load_pipeline(str(tmp_path / "sd"), kind="inpaint", device="cpu")


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_bad_specs_are_one_line_errors_naming_the_field(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_pipeline(str(tmp_path / "nope"), device="cpu")
    assert one_line(err).startswith("neg_image.pipeline: ") and "no such folder or file" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_pipeline("tiny:txt2img", kind="video", field="imgdiff.pipeline")
    assert one_line(err).startswith("imgdiff.pipeline: unknown pipeline kind 'video'")
    with pytest.raises(ConfigError) as err:
        load_pipeline("tiny:video")
    assert "unknown tiny pipeline" in one_line(err)
    with pytest.raises(ConfigError) as err:
        load_pipeline(str(tmp_path), device="cpu")  # a folder, but not a pipeline
    assert "no model_index.json" in one_line(err)
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError) as err:
        load_pipeline(str(tmp_path / "broken.safetensors"), device="cpu")
    assert one_line(err).startswith("neg_image.pipeline: ") and "safetensors" in str(err.value)


def test_pipeline_cache_loads_once_per_owner():
    cache = PipelineCache()
    first = cache.get("tiny:inpaint", device="cpu")
    assert cache.get("tiny:inpaint", device="cpu") is first
    assert PipelineCache().get("tiny:inpaint", device="cpu") is not first  # nothing shared between owners


def test_entry_point_writes_pairs_and_reports_bad_input(tmp_path, capsys):
    prompts = tmp_path / "pairs.tsv"
    prompts.write_text("a red apple\ta green apple\t5\na dog\ta small dog\n", encoding="utf-8")
    code = main(["p2p", "--pipeline", "tiny:txt2img", "--prompts", str(prompts), "--out", str(tmp_path / "out"), "--steps", "1", "--size", "16", "--batch", "2"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["pairs"] == 2 and summary["images"] == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000_edited.png", "00000_source.png", "00001_edited.png", "00001_source.png"]

    prompts.write_text("only one column\n", encoding="utf-8")
    assert main(["p2p", "--pipeline", "tiny:txt2img", "--prompts", str(prompts), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {prompts}:1: expected caption<TAB>edited caption[<TAB>seed]"
