from __future__ import annotations

import torch
import torch.nn.functional as F

from training.losses import ContrastiveLoss


def _feats(n=8, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(n, d, generator=g), dim=-1) for _ in range(3)]


def test_matches_clip_infonce_without_negatives():
    img, txt, _ = _feats()
    scale = torch.tensor(10.0)
    out = ContrastiveLoss()(img, txt, scale)["loss"]
    logits = scale * img @ txt.T
    labels = torch.arange(8)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(out, expected)


def test_hard_negatives_enter_the_image_side_only():
    img, txt, neg = _feats()
    scale = torch.tensor(10.0)
    plain = ContrastiveLoss()(img, txt, scale)
    with_neg = ContrastiveLoss()(img, txt, scale, negative_text_features=neg, has_negative=torch.ones(8, dtype=torch.bool))
    assert with_neg["loss_image"] > plain["loss_image"]
    assert torch.allclose(with_neg["loss_text"], plain["loss_text"])


def test_rows_without_a_negative_are_masked_out():
    img, txt, neg = _feats()
    scale = torch.tensor(10.0)
    plain = ContrastiveLoss()(img, txt, scale)["loss"]
    masked = ContrastiveLoss()(img, txt, scale, negative_text_features=neg, has_negative=torch.zeros(8, dtype=torch.bool))["loss"]
    assert torch.allclose(plain, masked)


def test_a_negative_identical_to_the_positive_costs_log2():
    img = F.normalize(torch.eye(4), dim=-1)
    scale = torch.tensor(100.0)
    out = ContrastiveLoss()(img, img, scale, negative_text_features=img, has_negative=torch.ones(4, dtype=torch.bool))
    assert abs(out["loss_image"].item() - torch.log(torch.tensor(2.0)).item()) < 1e-4


def test_siglip_matches_its_definition_and_counts_negatives():
    from training.losses import SigLipLoss

    img, txt, neg = _feats(n=4)
    scale, bias = torch.tensor(10.0), torch.tensor(-5.0)
    out = SigLipLoss()(img, txt, scale, bias)
    logits = scale * img @ txt.T + bias
    labels = 2 * torch.eye(4) - 1
    assert torch.allclose(out["loss"], -F.logsigmoid(labels * logits).sum() / 4)
    with_neg = SigLipLoss()(img, txt, scale, bias, negative_text_features=neg, has_negative=torch.ones(4, dtype=torch.bool))
    extra = -F.logsigmoid(-(scale * img @ neg.T + bias)).sum() / 4
    assert torch.allclose(with_neg["loss"], out["loss"] + extra)
    masked = SigLipLoss()(img, txt, scale, bias, negative_text_features=neg, has_negative=torch.zeros(4, dtype=torch.bool))
    assert torch.allclose(masked["loss"], out["loss"])


def test_loss_registry_fails_loudly():
    import pytest

    from training.losses import build_loss

    with pytest.raises(KeyError, match="unknown loss 'infonce'; known: clip, siglip"):
        build_loss("infonce")


def test_negative_images_enter_the_text_side_only():
    img, txt, neg_img = _feats(seed=3)
    scale = torch.tensor(10.0)
    plain = ContrastiveLoss()(img, txt, scale)
    out = ContrastiveLoss()(img, txt, scale, negative_image_features=neg_img, has_negative_image=torch.ones(8, dtype=torch.bool))
    assert out["loss_text"] > plain["loss_text"] and torch.allclose(out["loss_image"], plain["loss_image"])
    expected = F.cross_entropy(scale * txt @ torch.cat([img, neg_img]).T, torch.arange(8))
    assert torch.allclose(out["loss_text"], expected)
    masked = ContrastiveLoss()(img, txt, scale, negative_image_features=neg_img, has_negative_image=torch.zeros(8, dtype=torch.bool))
    assert torch.allclose(masked["loss"], plain["loss"])
