"""Contrastive losses as modules. Their `forward` arguments are the model's output dict keys.

Two losses, chosen by name (`LOSSES`, the recipe's `train.loss`): `clip` and `siglip`.

`ContrastiveLoss` is CLIP's InfoNCE, extended with hard negatives. Captions only (NegCLIP):
the image side scores each image against [T; T_neg], all positive captions of the global batch
followed by all negative captions, so each negative competes with the true caption. With
negative images (TripletCLIP), a row's (I_neg, T_neg) is a pair of its own: both (I, T) and
(I_neg, T_neg) are positives and each is the other's hard negative, on both sides. Every image
of [I; I_neg] is scored against [T; T_neg] and every caption of [T; T_neg] against [I; I_neg];
the label is the item's own partner, so I_neg must pick T_neg over T, and T must pick I over
I_neg. Rows without a negative caption or image have those columns masked out, and a negative
only becomes an anchor when its row has both halves of the pair; each side's loss is the mean
over its anchors. Features are gathered from every worker; the local chunk keeps its gradient
(open_clip's `gather_with_grad=False` scheme), and rank and world size are passed in.

`SigLipLoss` gets the same pairs as binary decisions: (I_neg, T_neg) is one more +1 pair and
every other combination of [I; I_neg] with [T; T_neg] a -1 pair, masked the same way.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def gather_features(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    if world_size == 1:
        return x
    chunks = [torch.zeros_like(x) for _ in range(world_size)]
    dist.all_gather(chunks, x.detach())
    chunks[rank] = x  # keep the gradient of the local features
    return torch.cat(chunks, dim=0)


class _GatheringLoss(nn.Module):
    """A loss over features gathered from every worker; rank and world size are passed in."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.rank = rank
        self.world_size = world_size


def _presence(present: torch.Tensor | None, negatives: torch.Tensor | None, like: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """[N] bool over the global batch: which rows have this negative (all, if unsaid; none, if absent)."""
    if negatives is None:
        return torch.zeros(like.shape[0], dtype=torch.bool, device=like.device)
    if present is None:
        return torch.ones(like.shape[0], dtype=torch.bool, device=like.device)
    return gather_features(present.float(), rank, world) > 0


class _PairedBatch:
    """The global batch laid out as [positives; negatives] on both sides, with what is valid.

    images, texts: [2N, D] (a missing negative side is zeros, always masked); row i's pair
    partner is row i on the other side, so labels are arange(2N). `text_valid`/`image_valid`
    [2N] say which columns exist; `anchor` [2N] which rows are scored (positives always,
    negatives only when the row has both a negative image and a negative caption)."""

    def __init__(self, loss: _GatheringLoss, image_features, text_features, negative_text_features, has_negative, negative_image_features, has_negative_image):
        rank, world = loss.rank, loss.world_size
        images = gather_features(image_features, rank, world)  # [N, D], N = B * world
        texts = gather_features(text_features, rank, world)  # [N, D]
        n = images.shape[0]
        neg_texts = gather_features(negative_text_features, rank, world) if negative_text_features is not None else torch.zeros_like(texts)
        neg_images = gather_features(negative_image_features, rank, world) if negative_image_features is not None else torch.zeros_like(images)
        has_text = _presence(has_negative, negative_text_features, images, rank, world)  # [N]
        has_image = _presence(has_negative_image, negative_image_features, images, rank, world)  # [N]
        everyone = torch.ones(n, dtype=torch.bool, device=images.device)
        self.n = n
        self.images = torch.cat([images, neg_images])  # [2N, D]
        self.texts = torch.cat([texts, neg_texts])  # [2N, D]
        self.text_valid = torch.cat([everyone, has_text])  # [2N]
        self.image_valid = torch.cat([everyone, has_image])  # [2N]
        self.anchor = torch.cat([everyone, has_text & has_image])  # [2N]
        self.labels = torch.arange(2 * n, device=images.device)


class ContrastiveLoss(_GatheringLoss):

    def forward(
        self,
        image_features: torch.Tensor,  # [B, D], L2-normalised
        text_features: torch.Tensor,  # [B, D]
        logit_scale: torch.Tensor,  # scalar, already exp()'d by open_clip
        negative_text_features: torch.Tensor | None = None,  # [B, D]
        has_negative: torch.Tensor | None = None,  # [B] bool
        negative_image_features: torch.Tensor | None = None,  # [B, D]
        has_negative_image: torch.Tensor | None = None,  # [B] bool
        **_: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        b = _PairedBatch(self, image_features, text_features, negative_text_features, has_negative, negative_image_features, has_negative_image)
        # Masked columns get -inf (never chosen); rows that are not anchors are left out.
        logits_per_image = (logit_scale * b.images @ b.texts.T).masked_fill(~b.text_valid.unsqueeze(0), float("-inf"))  # [2N, 2N]
        logits_per_text = (logit_scale * b.texts @ b.images.T).masked_fill(~b.image_valid.unsqueeze(0), float("-inf"))  # [2N, 2N]
        loss_i = F.cross_entropy(logits_per_image[b.anchor], b.labels[b.anchor])
        loss_t = F.cross_entropy(logits_per_text[b.anchor], b.labels[b.anchor])
        return {"loss": (loss_i + loss_t) / 2, "loss_image": loss_i.detach(), "loss_text": loss_t.detach()}


class SigLipLoss(_GatheringLoss):
    """SigLIP's pairwise sigmoid loss, with hard negatives as extra pairs.

    Every (image, text) pair is a binary decision: +1 on the diagonal, -1 elsewhere, and -1 for
    every (image, negative text) pair; a row with a negative image and caption adds the +1 pair
    (I_neg, T_neg) and its -1 pairs with every other caption. Features are gathered from all
    workers (simpler than SigLIP's ring exchange; the same result). The sum is divided by the
    number of images scored (N, plus the negative images present). Needs a model with a learned
    `logit_bias`.
    """

    def forward(
        self,
        image_features: torch.Tensor,  # [B, D], L2-normalised
        text_features: torch.Tensor,  # [B, D]
        logit_scale: torch.Tensor,  # scalar, exp()'d
        logit_bias: torch.Tensor | None = None,  # scalar
        negative_text_features: torch.Tensor | None = None,  # [B, D]
        has_negative: torch.Tensor | None = None,  # [B] bool
        negative_image_features: torch.Tensor | None = None,  # [B, D]
        has_negative_image: torch.Tensor | None = None,  # [B] bool
        **_: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        if logit_bias is None:
            raise ValueError("the siglip loss needs a model with a logit_bias (e.g. foil-tiny-vit-sigmoid)")
        b = _PairedBatch(self, image_features, text_features, negative_text_features, has_negative, negative_image_features, has_negative_image)
        logits = logit_scale * b.images @ b.texts.T + logit_bias  # [2N, 2N]
        labels = 2 * torch.eye(2 * b.n, device=logits.device) - 1  # +1 matching, -1 otherwise
        # A pair counts when its image and its caption both exist; (I_neg, T_neg) is +1 only as
        # part of a whole pair (both present), which is what the diagonal and the masks say.
        weight = (b.image_valid.unsqueeze(1) & b.text_valid.unsqueeze(0)).float()  # [2N, 2N]
        per_pair = -F.logsigmoid(labels * logits) * weight
        images_scored = b.image_valid.sum()
        loss = per_pair.sum() / images_scored
        # reported: the positive captions' block, and the negative captions' block
        return {
            "loss": loss,
            "loss_image": (per_pair[:, : b.n].sum() / images_scored).detach(),
            "loss_text": (per_pair[:, b.n :].sum() / images_scored).detach(),
        }


LOSSES: dict[str, type[nn.Module]] = {"clip": ContrastiveLoss, "siglip": SigLipLoss}


def build_loss(name: str, rank: int = 0, world_size: int = 1) -> nn.Module:
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name](rank=rank, world_size=world_size)
