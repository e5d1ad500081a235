"""Benchmarks from files: a model trained on four coloured squares must ace colour benchmarks,
and degenerate items must score 0, whatever the model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from pipeline.core.stage import ConfigError
from pipeline.models import factory as M
from training.data import BatchDecoder
from training.jobs import EvalFiles, evaluate
from training.loop import LoopConfig, cosine_with_warmup, make_optimizer, train_loop
from training.losses import build_loss

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230), "yellow": (240, 230, 20)}


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    for name, rgb in COLOURS.items():
        Image.new("RGB", (64, 64), rgb).save(root / f"{name}.png")
    rows = {"caption": [f"a {c} square" for c in COLOURS], "negative_caption": [None] * 4, "image": [(root / f"{c}.png").read_bytes() for c in COLOURS]}
    batch = {k: torch.from_numpy(v) for k, v in BatchDecoder("foil-tiny-vit")(rows).items()}
    torch.manual_seed(0)
    model = M.create_model("foil-tiny-vit")
    cfg = LoopConfig(steps=60, lr=1e-3, warmup_steps=2, use_negatives=False)
    opt = make_optimizer(model, cfg)
    train_loop(model, iter(lambda: batch, None), build_loss("clip"), opt, cosine_with_warmup(opt, 2, 60), cfg)
    weights = root / "open_clip_model.pt"
    M.save_open_clip_checkpoint(model, weights, 60, "foil-tiny-vit")
    return root, str(weights)


def _write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def test_a_model_that_learned_colours_aces_colour_benchmarks(tmp_path, colour_model):
    root, weights = colour_model
    names = list(COLOURS)
    sc = {str(i): {"filename": f"{c}.png", "caption": f"a {c} square", "negative_caption": f"a {names[(i + 1) % 4]} square"} for i, c in enumerate(names)}
    pairs = [{"image_0": "red.png", "image_1": "blue.png", "caption_0": "a red square", "caption_1": "a blue square"},
             {"image_0": "green.png", "image_1": "yellow.png", "caption_0": "a green square", "caption_1": "a yellow square"}]
    zs = [{"image": f"{c}.png", "label": c} for c in names]
    files = EvalFiles(str(root), (_write(tmp_path / "replace_att.json", sc),), (_write(tmp_path / "colours.json", pairs),),
                      (_write(tmp_path / "colour_names.json", zs),), templates=("a {} square",))
    metrics = evaluate(None, weights, "foil-tiny-vit", "colours", files)
    assert metrics["sugarcrepe:replace_att"] == 1.0 and metrics["sugarcrepe:replace_att:items"] == 4
    assert metrics["pairs:colours:group_score"] == 1.0
    assert metrics["zeroshot:colour_names:top1"] == 1.0 and metrics["zeroshot:colour_names:classes"] == 4


def test_degenerate_items_score_zero(tmp_path, colour_model):
    root, weights = colour_model
    same_caption = [{"filename": "red.png", "caption": "a red square", "negative_caption": "a red square"}]
    same_image = [{"image_0": "red.png", "image_1": "red.png", "caption_0": "a red square", "caption_1": "a blue square"}]
    files = EvalFiles(str(root), (_write(tmp_path / "same.json", same_caption),), (_write(tmp_path / "twins.json", same_image),))
    metrics = evaluate(None, weights, "foil-tiny-vit", "x", files)
    assert metrics["sugarcrepe:same"] == 0.0
    assert metrics["pairs:twins:text_score"] == 0.0 and metrics["pairs:twins:group_score"] == 0.0


def test_malformed_files_name_file_item_and_field(tmp_path, colour_model):
    root, weights = colour_model
    bad = _write(tmp_path / "bad.json", {"17": {"filename": "red.png", "caption": "a red square"}})
    with pytest.raises(ConfigError, match=r"bad\.json: item 17: missing or empty field 'negative_caption'"):
        evaluate(None, weights, "foil-tiny-vit", "x", EvalFiles(str(root), (bad,)))
    missing = _write(tmp_path / "missing.json", [{"image": "purple.png", "label": "purple"}])
    with pytest.raises(ConfigError, match=r"missing\.json: image .*purple\.png not found"):
        evaluate(None, weights, "foil-tiny-vit", "x", EvalFiles(str(root), zeroshot=(missing,)))
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "eval", "--checkpoint", weights, "--sugarcrepe", bad, "--images", str(root)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "missing or empty field 'negative_caption'" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
