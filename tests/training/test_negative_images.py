"""Training with negative images: decoded, encoded in the same forward pass, masked where absent,
and used as TripletCLIP's second pair (the loss itself is checked in test_losses.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from pipeline.core import schema as S
from pipeline.models import factory as M
from training.data import BatchDecoder
from training.loop import LoopConfig, cosine_with_warmup, make_optimizer, train_loop
from training.losses import build_loss
from tests.conftest import png_bytes

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230), "yellow": (240, 230, 20)}


def _rows(with_images: tuple[bool, ...] = (True, True, False, True)) -> pa.Table:
    """Minimal pairs: a red square whose negative is 'a green square' and a green square image."""
    names = list(COLOURS)
    nxt = [names[(i + 1) % len(names)] for i in range(len(names))]
    return pa.table({
        S.SAMPLE_ID: names,
        S.CAPTION: [f"a {n} square" for n in names],
        S.NEG_CAPTION: [f"a {n} square" for n in nxt],
        S.NEG_KIND: ["replace_attribute"] * 4,
        S.IMAGE: [png_bytes(COLOURS[n], (64, 64)) for n in names],
        S.NEG_IMAGE_COL: [png_bytes(COLOURS[n], (64, 64)) if keep else None for n, keep in zip(nxt, with_images)],
    })


def test_decoder_decodes_negative_images_and_marks_the_missing():
    decode = BatchDecoder("foil-tiny-vit")
    batch = decode(_rows().to_pydict())
    assert batch["negative_image"].shape == (4, 64, 64, 3) and batch["negative_image"].dtype == np.uint8
    assert batch["has_negative_image"].tolist() == [True, True, False, True]
    assert np.array_equal(batch["negative_image"][0], batch["image"][1])  # red's negative image is the green square
    assert not batch["negative_image"][2].any()  # none: a black placeholder, masked by the loss
    older = decode(_rows().drop_columns([S.NEG_IMAGE_COL]).to_pydict())  # a table exported before the column existed
    assert not older["has_negative_image"].any() and older["negative_image"].shape == (4, 64, 64, 3)


class _Recording(torch.nn.Module):
    """The real loss, keeping what the loop handed it."""

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss, self.calls = loss, []

    def forward(self, **kwargs: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls.append({k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
        return self.loss(**kwargs)


def _train(use_negative_images: bool, steps: int, loss: str = "clip", arch: str = "foil-tiny-vit"):
    torch.manual_seed(0)
    model = M.create_model(arch)
    decoded = {k: torch.from_numpy(v) for k, v in BatchDecoder(arch)(_rows().to_pydict()).items()}
    cfg = LoopConfig(steps=steps, lr=1e-3, warmup_steps=2, log_every=1, use_negative_images=use_negative_images)
    optimizer = make_optimizer(model, cfg)
    scheduler = cosine_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    recording = _Recording(build_loss(loss))
    history: list[dict[str, float]] = []

    def batches():
        while True:
            yield decoded

    train_loop(model, batches(), recording, optimizer, scheduler, cfg, on_step=lambda s, m: history.append(m))
    return model, decoded, recording.calls, history


def test_a_few_steps_with_negative_images_encode_them_and_change_the_loss():
    _, _, plain_calls, plain = _train(use_negative_images=False, steps=3)
    model, decoded, calls, history = _train(use_negative_images=True, steps=3)
    assert "negative_image_features" not in plain_calls[0]
    first = calls[0]
    assert first["image_features"].shape == first["negative_image_features"].shape == (4, model.visual.output_dim)
    assert first["has_negative_image"].tolist() == [True, True, False, True]
    # The first images are the same model's features in both runs; the negative ones are the
    # negative squares' features (the encoder saw [I; I_neg] in one batch).
    assert torch.allclose(first["image_features"], plain_calls[0]["image_features"], atol=1e-5)
    with torch.no_grad():
        torch.manual_seed(0)
        fresh = M.create_model("foil-tiny-vit").train()
        expected = fresh.encode_image(M.normalize(decoded["negative_image"]), normalize=True)
    assert torch.allclose(first["negative_image_features"], expected, atol=1e-5)
    # The same first step scores more candidates and anchors: its text-side loss differs
    assert abs(history[0]["loss_text"] - plain[0]["loss_text"]) > 1e-4
    assert history[0]["loss"] != plain[0]["loss"]


def test_training_on_minimal_pairs_learns_both_sides():
    model, decoded, _, history = _train(use_negative_images=True, steps=40)
    assert history[-1]["loss"] < history[0]["loss"] * 0.5
    model.eval()
    with torch.no_grad():
        neg_images = model.encode_image(M.normalize(decoded["negative_image"]), normalize=True)
        texts = model.encode_text(decoded["text"], normalize=True)
        neg_texts = model.encode_text(decoded["negative_text"], normalize=True)
    present = decoded["has_negative_image"]
    # each negative image matches its own (negative) caption better than the positive caption
    assert bool(((neg_images * neg_texts).sum(-1) > (neg_images * texts).sum(-1))[present].all())


def test_siglip_trains_with_negative_images():
    _, _, calls, history = _train(use_negative_images=True, steps=20, loss="siglip", arch="foil-tiny-vit-sigmoid")
    assert "negative_image_features" in calls[0]
    assert history[-1]["loss"] < history[0]["loss"]
