from __future__ import annotations

import math

import pytest
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


def _triplet_reference(img, txt, neg_txt, neg_img, has_txt, has_img, scale):
    """TripletCLIP's loss written out anchor by anchor, in plain Python loops."""
    n = img.shape[0]
    images = [(img[i], True) for i in range(n)] + [(neg_img[i], bool(has_img[i])) for i in range(n)]
    texts = [(txt[i], True) for i in range(n)] + [(neg_txt[i], bool(has_txt[i])) for i in range(n)]
    anchors = list(range(n)) + [n + i for i in range(n) if has_img[i] and has_txt[i]]

    def side(queries, candidates):
        losses = []
        for a in anchors:
            scores = {c: float(scale * queries[a][0] @ candidates[c][0]) for c in range(2 * n) if candidates[c][1]}
            top = max(scores.values())
            log_z = top + math.log(sum(math.exp(v - top) for v in scores.values()))
            losses.append(log_z - scores[a])  # the label is the anchor's own partner
        return sum(losses) / len(losses)

    return side(images, texts), side(texts, images)


def test_triplet_loss_equals_a_hand_computed_reference_with_masked_rows():
    g = torch.Generator().manual_seed(7)
    img, txt, neg_txt, neg_img = (F.normalize(torch.randn(4, 8, generator=g), dim=-1) for _ in range(4))
    has_txt = torch.tensor([True, True, False, True])
    has_img = torch.tensor([True, False, True, True])  # row 0 and 3: whole pairs; 1: caption only; 2: image only
    scale = torch.tensor(5.0)
    out = ContrastiveLoss()(img, txt, scale, negative_text_features=neg_txt, has_negative=has_txt,
                            negative_image_features=neg_img, has_negative_image=has_img)
    ref_image, ref_text = _triplet_reference(img, txt, neg_txt, neg_img, has_txt, has_img, 5.0)
    assert out["loss_image"].item() == pytest.approx(ref_image, rel=1e-5)
    assert out["loss_text"].item() == pytest.approx(ref_text, rel=1e-5)
    assert out["loss"].item() == pytest.approx((ref_image + ref_text) / 2, rel=1e-5)


def test_a_masked_negative_image_changes_nothing_whatever_its_features():
    img, txt, neg = _feats(n=4, seed=5)
    has_txt = torch.tensor([True, False, True, True])
    no_images = torch.zeros(4, dtype=torch.bool)
    text_only = ContrastiveLoss()(img, txt, torch.tensor(10.0), negative_text_features=neg, has_negative=has_txt)
    for junk in (torch.zeros(4, 16), torch.randn(4, 16)):
        masked = ContrastiveLoss()(img, txt, torch.tensor(10.0), negative_text_features=neg, has_negative=has_txt,
                                   negative_image_features=junk, has_negative_image=no_images)
        assert torch.allclose(masked["loss"], text_only["loss"]) and torch.allclose(masked["loss_text"], text_only["loss_text"])


def test_a_negative_pair_identical_to_the_positive_costs_log2_on_both_sides():
    # I_neg = I and T_neg = T: each anchor has two equally good candidates, its partner and its copy
    e = F.normalize(torch.eye(4), dim=-1)
    ones = torch.ones(4, dtype=torch.bool)
    out = ContrastiveLoss()(e, e, torch.tensor(100.0), negative_text_features=e, has_negative=ones, negative_image_features=e, has_negative_image=ones)
    assert out["loss_image"].item() == pytest.approx(math.log(2), abs=1e-4)
    assert out["loss_text"].item() == pytest.approx(math.log(2), abs=1e-4)


def test_siglip_scores_the_negative_pair_as_one_more_positive():
    from training.losses import SigLipLoss

    img, txt, neg_txt = _feats(n=3, seed=11)
    neg_img = _feats(n=3, seed=12)[0]
    scale, bias = torch.tensor(10.0), torch.tensor(-5.0)
    has_txt = torch.tensor([True, True, False])
    has_img = torch.tensor([True, False, True])
    out = SigLipLoss()(img, txt, scale, bias, negative_text_features=neg_txt, has_negative=has_txt,
                       negative_image_features=neg_img, has_negative_image=has_img)
    images = [img[0], img[1], img[2], neg_img[0], neg_img[2]]  # the present ones
    texts = [txt[0], txt[1], txt[2], neg_txt[0], neg_txt[1]]
    positives = {(0, 0), (1, 1), (2, 2), (3, 3)}  # (I_neg 0, T_neg 0) is the only whole negative pair
    total = 0.0
    for a, image in enumerate(images):
        for c, text in enumerate(texts):
            sign = 1.0 if (a, c) in positives else -1.0
            total += -F.logsigmoid(torch.tensor(sign) * (scale * image @ text + bias)).item()
    assert out["loss"].item() == pytest.approx(total / len(images), rel=1e-5)
