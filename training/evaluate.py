"""Evaluation of a two-tower model on held-out rows: retrieval and hard-negative accuracy.

- Retrieval R@k, image->text and text->image, over the eval split (each image's own caption is
  the single correct text; duplicated captions count as correct too, since they are identical).
- Hard-negative accuracy: the share of images scored closer to their caption than to its hard
  negative, overall and per negative kind (SugarCrepe's metric).
- CLIP-score AUC: how well the image-text cosine separates true pairs from caption-shuffled pairs
  (each image with another row's caption), the property a CLIP-score filter relies on.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa
import torch

from pipeline.core import schema as S
from pipeline.models import factory as M
from training.data import BatchDecoder


@torch.no_grad()
def embed_rows(model: torch.nn.Module, model_name: str, rows: pa.Table, batch_size: int = 128) -> dict[str, np.ndarray]:
    model.eval()
    decode = BatchDecoder(model_name)
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    for start in range(0, rows.num_rows, batch_size):
        chunk = rows.slice(start, batch_size).to_pydict()
        batch = decode(chunk)
        images = M.normalize(torch.from_numpy(batch["image"]))
        parts["image"].append(model.encode_image(images, normalize=True).numpy())
        parts["text"].append(model.encode_text(torch.from_numpy(batch["text"]), normalize=True).numpy())
        parts["negative"].append(model.encode_text(torch.from_numpy(batch["negative_text"]), normalize=True).numpy())
        parts["has_negative"].append(batch["has_negative"])
    return {k: np.concatenate(v) for k, v in parts.items()}


def recall_at_k(similarity: np.ndarray, correct: np.ndarray, k: int) -> float:
    """similarity [Q, C]; correct [Q, C] bool. Share of queries with a correct item in the top k."""
    top = np.argsort(-similarity, axis=1)[:, :k]
    return float(np.mean(np.take_along_axis(correct, top, axis=1).any(axis=1)))


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counting half (Mann-Whitney U)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([positive, negative]))
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def shuffled_pairs(captions: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image rows, caption rows) pairing every row with another row's caption, skipping pairs
    whose captions happen to be identical."""
    order = np.random.default_rng(seed).permutation(len(captions))
    other = np.roll(order, 1)
    keep = captions[order] != captions[other]
    return order[keep], other[keep]


def evaluate(model: torch.nn.Module, model_name: str, rows: pa.Table) -> dict[str, float]:
    if rows.num_rows == 0:
        raise ValueError("no evaluation rows (is the eval split empty?)")
    emb = embed_rows(model, model_name, rows)
    captions = np.array(rows[S.CAPTION].to_pylist(), dtype=object)
    same_caption = captions[:, None] == captions[None, :]  # [N, N]
    sim = emb["image"] @ emb["text"].T  # [N images, N texts]
    metrics: dict[str, float] = {"eval_rows": float(rows.num_rows)}
    for k in (1, 5, 10):
        metrics[f"image_to_text_R@{k}"] = recall_at_k(sim, same_caption, k)
        metrics[f"text_to_image_R@{k}"] = recall_at_k(sim.T, same_caption.T, k)
    if rows.num_rows > 1:
        image_rows, caption_rows = shuffled_pairs(captions)
        metrics["clip_score_auc"] = roc_auc(np.diag(sim), sim[image_rows, caption_rows])
    has = emb["has_negative"]
    if has.any():
        pos = np.sum(emb["image"] * emb["text"], axis=1)
        neg = np.sum(emb["image"] * emb["negative"], axis=1)
        wins = pos > neg
        metrics["hard_negative_accuracy"] = float(np.mean(wins[has]))
        metrics["hard_negative_rows"] = float(has.sum())
        kinds = np.array(rows[S.NEG_KIND].to_pylist(), dtype=object)
        for kind in sorted({k for k in kinds[has] if k}):
            sel = has & (kinds == kind)
            metrics[f"hard_negative_accuracy:{kind}"] = float(np.mean(wins[sel]))
    return metrics
