"""Contrastive losses as modules. Their `forward` arguments are the model's output dict keys.

Two losses, chosen by name (`LOSSES`, the recipe's `train.loss`): `clip` and `siglip`.

`ContrastiveLoss` is CLIP's InfoNCE, extended with hard negatives in NegCLIP's layout: the
image side scores each image against [T; T_neg], all positive captions of the global batch
followed by all negative captions, so each negative competes with the true caption; when
negative images are present, the text side likewise scores each caption against [I; I_neg].
Rows without a negative have their negative column masked out. Features are gathered from every worker; the local chunk keeps its gradient
(open_clip's `gather_with_grad=False` scheme), and rank and world size are passed in.
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
        images = gather_features(image_features, self.rank, self.world_size)  # [N, D], N = B * world
        texts = gather_features(text_features, self.rank, self.world_size)  # [N, D]
        n = images.shape[0]
        labels = torch.arange(n, device=images.device)

        candidates = texts
        if negative_text_features is not None:
            negatives = gather_features(negative_text_features, self.rank, self.world_size)  # [N, D]
            candidates = torch.cat([texts, negatives], dim=0)  # [2N, D]
        logits_per_image = self._mask(logit_scale * images @ candidates.T, has_negative, n)  # [N, N] or [N, 2N]

        image_candidates = images
        if negative_image_features is not None:
            negative_images = gather_features(negative_image_features, self.rank, self.world_size)  # [N, D]
            image_candidates = torch.cat([images, negative_images], dim=0)  # [2N, D]
        logits_per_text = self._mask(logit_scale * texts @ image_candidates.T, has_negative_image, n)  # [N, N] or [N, 2N]

        loss_i = F.cross_entropy(logits_per_image, labels)
        loss_t = F.cross_entropy(logits_per_text, labels)
        return {"loss": (loss_i + loss_t) / 2, "loss_image": loss_i.detach(), "loss_text": loss_t.detach()}

    def _mask(self, logits: torch.Tensor, present: torch.Tensor | None, n: int) -> torch.Tensor:
        """Columns n.. are negatives; hide those of rows that have none."""
        if present is None or logits.shape[1] == n:
            return logits
        mask = gather_features(present.float(), self.rank, self.world_size) > 0  # [N]
        invalid = torch.cat([torch.zeros(n, dtype=torch.bool, device=logits.device), ~mask])
        return logits.masked_fill(invalid.unsqueeze(0), float("-inf"))


class SigLipLoss(_GatheringLoss):
    """SigLIP's pairwise sigmoid loss, with text hard negatives as extra negative pairs.

    Every (image, text) pair is a binary decision: +1 on the diagonal, -1 elsewhere, and -1 for
    every (image, negative text) pair. Features are gathered from all workers (simpler than
    SigLIP's ring exchange; the same result). Needs a model with a learned `logit_bias`.
    """

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.rank = rank
        self.world_size = world_size

    def forward(
        self,
        image_features: torch.Tensor,  # [B, D], L2-normalised
        text_features: torch.Tensor,  # [B, D]
        logit_scale: torch.Tensor,  # scalar, exp()'d
        logit_bias: torch.Tensor | None = None,  # scalar
        negative_text_features: torch.Tensor | None = None,  # [B, D]
        has_negative: torch.Tensor | None = None,  # [B] bool
        **_: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        if logit_bias is None:
            raise ValueError("the siglip loss needs a model with a logit_bias (e.g. foil-tiny-vit-sigmoid)")
        images = gather_features(image_features, self.rank, self.world_size)  # [N, D]
        texts = gather_features(text_features, self.rank, self.world_size)  # [N, D]
        n = images.shape[0]
        logits = logit_scale * images @ texts.T + logit_bias  # [N, N]
        labels = 2 * torch.eye(n, device=images.device) - 1  # +1 matching, -1 otherwise
        pair_loss = -F.logsigmoid(labels * logits).sum()
        neg_loss = torch.zeros((), device=images.device)
        if negative_text_features is not None:
            negatives = gather_features(negative_text_features, self.rank, self.world_size)  # [N, D]
            neg_logits = logit_scale * images @ negatives.T + logit_bias  # [N, N], all -1 pairs
            weight = torch.ones_like(neg_logits)
            if has_negative is not None:
                weight = weight * (gather_features(has_negative.float(), self.rank, self.world_size) > 0).float().unsqueeze(0)
            neg_loss = -(F.logsigmoid(-neg_logits) * weight).sum()
        loss = (pair_loss + neg_loss) / n
        return {"loss": loss, "loss_image": (pair_loss / n).detach(), "loss_text": (neg_loss / n).detach()}


LOSSES: dict[str, type[nn.Module]] = {"clip": ContrastiveLoss, "siglip": SigLipLoss}


def build_loss(name: str, rank: int = 0, world_size: int = 1) -> nn.Module:
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name](rank=rank, world_size=world_size)
