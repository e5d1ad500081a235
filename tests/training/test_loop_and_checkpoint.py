from __future__ import annotations

import numpy as np
import open_clip
import pyarrow as pa
import pytest
import torch
from PIL import Image

from pipeline.core import schema as S
from pipeline.models import factory as M
from training.data import BatchDecoder
from training.evaluate import evaluate, recall_at_k
from training.loop import LoopConfig, cosine_with_warmup, make_optimizer, train_loop
from training.losses import build_loss
from tests.conftest import png_bytes

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230), "yellow": (240, 230, 20)}


def _rows() -> pa.Table:
    caps, negs, imgs = [], [], []
    names = list(COLOURS)
    for i, name in enumerate(names):
        caps.append(f"a {name} square")
        negs.append(f"a {names[(i + 1) % len(names)]} square")
        imgs.append(png_bytes(COLOURS[name], (64, 64)))
    return pa.table({S.SAMPLE_ID: names, S.CAPTION: caps, S.NEG_CAPTION: negs, S.NEG_KIND: ["replace_attribute"] * 4, S.IMAGE: imgs})


def test_decoder_shapes_and_alpha_on_white():
    decode = BatchDecoder("foil-tiny-vit")
    batch = decode(_rows().to_pydict())
    assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.uint8
    assert batch["text"].shape == (4, 32) and batch["has_negative"].all()
    import io

    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buf, format="PNG")
    assert BatchDecoder("foil-tiny-vit")({S.CAPTION: ["x"], S.NEG_CAPTION: [None], S.IMAGE: [buf.getvalue()]})["image"].min() == 255


@pytest.mark.parametrize("arch, loss", [("foil-tiny-vit", "clip"), ("foil-tiny-vit-sigmoid", "siglip")])
def test_loop_learns_and_checkpoint_loads_in_open_clip(tmp_path, arch, loss):
    torch.manual_seed(0)
    model = M.create_model(arch)
    decoded = {k: torch.from_numpy(v) for k, v in BatchDecoder(arch)(_rows().to_pydict()).items()}
    cfg = LoopConfig(steps=40, lr=1e-3, warmup_steps=2, log_every=1)
    optimizer = make_optimizer(model, cfg)
    scheduler = cosine_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    history = []

    def batches():
        while True:
            yield decoded

    last = train_loop(model, batches(), build_loss(loss), optimizer, scheduler, cfg, on_step=lambda s, m: history.append(m["loss"]))
    assert last == 40
    assert history[-1] < history[0] * 0.5

    path = tmp_path / "open_clip_model.pt"
    M.save_open_clip_checkpoint(model, path, last, arch)
    loaded, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(path))
    model.eval()
    loaded.eval()
    with torch.no_grad():
        images = M.normalize(decoded["image"])
        assert torch.allclose(model.encode_image(images), loaded.encode_image(images), atol=1e-6)
        assert torch.allclose(model.encode_text(decoded["text"]), loaded.encode_text(decoded["text"]), atol=1e-6)

    metrics = evaluate(loaded, arch, _rows())
    assert metrics["image_to_text_R@1"] == 1.0 and metrics["hard_negative_accuracy"] == 1.0
    assert metrics["hard_negative_accuracy:replace_attribute"] == 1.0


def test_recall_at_k():
    sim = np.array([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0], [0.3, 0.2, 0.1]])
    correct = np.eye(3, dtype=bool)
    assert recall_at_k(sim, correct, 1) == 1 / 3
    assert recall_at_k(sim, correct, 2) == 2 / 3
    assert recall_at_k(sim, correct, 3) == 1.0


def test_gradient_accumulation_steps_once_per_accum_micro_batches():
    torch.manual_seed(0)
    model = M.create_model("foil-tiny-vit")
    decoded = {k: torch.from_numpy(v) for k, v in BatchDecoder("foil-tiny-vit")(_rows().to_pydict()).items()}
    cfg = LoopConfig(steps=3, lr=1e-3, warmup_steps=1, grad_accum=2, log_every=1)
    optimizer = make_optimizer(model, cfg)
    fed = []

    def batches():
        while True:
            fed.append(1)
            yield decoded

    steps = []
    last = train_loop(model, batches(), build_loss("clip"), optimizer, cosine_with_warmup(optimizer, 1, 3), cfg, on_step=lambda s, m: steps.append(s))
    assert last == 3 and steps == [1, 2, 3]
    assert len(fed) == 6  # two micro-batches per optimizer step
    assert optimizer.state_dict()["state"][0]["step"] == 3


def test_checkpoints_every_checkpoint_every_steps_whatever_log_every():
    torch.manual_seed(0)
    model = M.create_model("foil-tiny-vit")
    decoded = {k: torch.from_numpy(v) for k, v in BatchDecoder("foil-tiny-vit")(_rows().to_pydict()).items()}
    cfg = LoopConfig(steps=12, lr=1e-3, warmup_steps=1, log_every=5, checkpoint_every=4)
    optimizer = make_optimizer(model, cfg)
    logged, saved = [], []
    train_loop(
        model, iter(lambda: decoded, None), build_loss("clip"), optimizer, cosine_with_warmup(optimizer, 1, 12), cfg,
        on_step=lambda s, m: logged.append(s), on_checkpoint=lambda s, m: saved.append((s, m["loss"])),
    )
    assert logged == [5, 10, 12]  # and the last step
    assert [s for s, _ in saved] == [4, 8, 12]
    assert all(np.isfinite(loss) for _, loss in saved)  # a checkpoint carries the step's metrics
