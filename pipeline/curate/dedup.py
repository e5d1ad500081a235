"""Deduplication: exact, perceptual (near) and semantic duplicates, each pointing at the row it
duplicates. Written to table `duplicates`; the curated view removes them with a named reason.

Dedup compares rows across shards, so it is a whole-dataset step (`DedupStep`) rather than a
per-shard stage: it reads only the small score and embedding columns and writes one shard,
committed by `run_dataset_step` like any stage's shards.

- exact: the same image bytes (sha256).
- near: perceptual hashes (pHash, 64 bits) within `max_phash_distance` bits *and* 4x4 colour
  thumbnails within `max_color_difference` per channel: pHash sees only grey levels, and a red
  and a blue heart, a minimal pair foil exists to keep, would otherwise be near-duplicates.
  Candidates come from banding: with the hash cut into d + 1 bands, two hashes within d bits
  agree on at least one whole band (pigeonhole), so only rows sharing a band are compared.
- semantic (SemDeDup): k-means over image embeddings, then pairs in a cluster with cosine at or
  above `semantic_threshold`. Needs table `embeddings`; skipped (and said so) without it.

Groups are closed transitively (union-find); in each group the smallest sample_id is kept and
every other member points at it. Its kind says how it relates to that kept row: `exact` (same
bytes), `near` (hash within the distance) or `semantic` (cosine at or above the threshold), or,
when it joined only through other members, the strongest kind of its own links.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import schema as S
from pipeline.embed.embed import embedding_matrix
from pipeline.curate.score import color_difference
from pipeline.core.runners import run_dataset_step
from pipeline.core.stage import ConfigError, DatasetStep
from pipeline.core.store import Dataset

DUPLICATES = "duplicates"
DUPLICATES_SCHEMA = pa.schema(
    [(S.SAMPLE_ID, pa.string()), ("duplicate_of", pa.string()), (S.KIND, pa.string()), ("distance", pa.float32())]
)


@dataclass(frozen=True)
class DedupConfig:
    max_phash_distance: int = 4
    max_color_difference: int = 24  # 0-255, largest per-channel difference of the 4x4 thumbnails
    semantic_threshold: float = 0.95
    cluster_size: int = 100  # rows per k-means cluster, on average

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "dedup") -> "DedupConfig":
        for key in values:
            if key not in cls.__dataclass_fields__:
                raise ConfigError(f"{where}.{key}: unknown field; known: {', '.join(cls.__dataclass_fields__)}")
        cfg = cls(**values)
        if isinstance(cfg.max_phash_distance, bool) or not isinstance(cfg.max_phash_distance, int) or not 0 <= cfg.max_phash_distance <= 16:
            raise ConfigError(f"{where}.max_phash_distance: must be an integer from 0 to 16, got {cfg.max_phash_distance!r}")
        if isinstance(cfg.max_color_difference, bool) or not isinstance(cfg.max_color_difference, int) or not 0 <= cfg.max_color_difference <= 255:
            raise ConfigError(f"{where}.max_color_difference: must be an integer from 0 to 255, got {cfg.max_color_difference!r}")
        if not isinstance(cfg.semantic_threshold, (int, float)) or not 0 < cfg.semantic_threshold <= 1:
            raise ConfigError(f"{where}.semantic_threshold: must be a cosine in (0, 1], got {cfg.semantic_threshold!r}")
        if isinstance(cfg.cluster_size, bool) or not isinstance(cfg.cluster_size, int) or cfg.cluster_size < 2:
            raise ConfigError(f"{where}.cluster_size: must be an integer of at least 2, got {cfg.cluster_size!r}")
        return cfg


KIND_ORDER = ("exact", "near", "semantic")


class _Groups:
    """Union-find over row indices; remembers each row's strongest link (exact > near > semantic)."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.link: dict[int, str] = {}

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int, kind: str) -> None:
        for i in (a, b):
            if i not in self.link or KIND_ORDER.index(kind) < KIND_ORDER.index(self.link[i]):
                self.link[i] = kind
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_pairs(hashes: list[int], max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for all pairs within `max_distance` bits, via banding."""
    bands = max_distance + 1
    edges = [int(e) for e in np.linspace(0, 64, bands + 1)]  # python ints: hashes exceed int64
    pairs: dict[tuple[int, int], int] = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (1 << (hi - lo)) - 1
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, h in enumerate(hashes):
            buckets[(h >> lo) & mask].append(i)
        for members in buckets.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    i, j = members[x], members[y]
                    if (i, j) not in pairs:
                        d = (hashes[i] ^ hashes[j]).bit_count()
                        if d <= max_distance:
                            pairs[(i, j)] = d
    return [(i, j, d) for (i, j), d in pairs.items()]


def semantic_pairs(vectors: np.ndarray, threshold: float, cluster_size: int, seed: int = 0) -> list[tuple[int, int, float]]:
    """(i, j, cosine) for pairs in the same k-means cluster with cosine >= threshold."""
    import faiss

    n, dim = vectors.shape
    k = max(1, n // cluster_size)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if k > 1:
        kmeans = faiss.Kmeans(dim, k, niter=20, seed=seed, spherical=True, verbose=False)
        kmeans.train(x)
        _, assign = kmeans.index.search(x, 1)
        labels = assign[:, 0]
    else:
        labels = np.zeros(n, dtype=np.int64)
    pairs = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        sims = x[idx] @ x[idx].T  # [m, m] cosine of normalised vectors
        rows, cols = np.nonzero(np.triu(sims >= threshold, k=1))
        pairs += [(int(idx[r]), int(idx[c2]), float(sims[r, c2])) for r, c2 in zip(rows, cols)]
    return pairs


class DedupStep(DatasetStep):
    """Duplicates among scored rows (and embedded ones, when table `embeddings` exists)."""

    name = "dedup"
    outputs = {DUPLICATES: DUPLICATES_SCHEMA}
    inputs = (S.SCORES, S.EMBEDDINGS)

    def __init__(self, cfg: DedupConfig):
        super().__init__()
        self.cfg = cfg

    def config(self) -> dict[str, Any]:
        return vars(self.cfg)

    def compute(self, dataset: Dataset):
        out, report = find_duplicates(dataset, self.cfg)
        self.stats.rows_in = report.pop("rows")
        self.stats.rows_out = len(out[S.SAMPLE_ID])
        self.stats.counts.update(report)  # exact, near, semantic, near_pairs_rejected_by_colour, semantic_pass_ran
        yield DUPLICATES, "part-00000", pa.table(out, schema=DUPLICATES_SCHEMA)


def dedup(dataset: Dataset, cfg: DedupConfig, overwrite: bool = False) -> dict[str, Any]:
    """Find duplicates and commit table `duplicates`. Returns counts per kind, how the semantic
    pass went, and whether a current result was kept (`resumed`)."""
    report = run_dataset_step(DedupStep(cfg), dataset, overwrite=overwrite)
    counts = report.stats.get("counts", {})
    out: dict[str, Any] = {"rows": report.stats.get("rows_in", 0), **{k: counts.get(k, 0) for k in ("exact", "near", "semantic", "near_pairs_rejected_by_colour")}}
    out["semantic_pass"] = "done" if counts.get("semantic_pass_ran") else "skipped: no embeddings table (run `foil embed`)"
    out["resumed"] = report.shards_skipped > 0
    out["seconds"] = round(report.seconds, 3)
    return out


def find_duplicates(dataset: Dataset, cfg: DedupConfig) -> tuple[dict[str, list], dict[str, Any]]:
    """The rows of table `duplicates`, and counts of how they were found."""
    scores = dataset.table(S.SCORES).read(columns=[S.SAMPLE_ID, S.SHA256, S.PHASH, S.COLOR_THUMB])
    scores = scores.sort_by(S.SAMPLE_ID)
    ids = scores[S.SAMPLE_ID].to_pylist()
    position = {sid: i for i, sid in enumerate(ids)}
    groups = _Groups(len(ids))
    report: dict[str, Any] = {"rows": len(ids)}

    first_with: dict[str, int] = {}
    for i, digest in enumerate(scores[S.SHA256].to_pylist()):
        if digest is not None:
            if digest in first_with:
                groups.union(first_with[digest], i, "exact")
            else:
                first_with[digest] = i

    digests = scores[S.SHA256].to_pylist()
    thumbs = scores[S.COLOR_THUMB].to_pylist()
    phash = {i: int(h, 16) for i, h in enumerate(scores[S.PHASH].to_pylist()) if h and thumbs[i]}
    hashed = list(phash.items())

    def same_colours(i: int, j: int) -> bool:
        return color_difference(thumbs[i], thumbs[j]) <= cfg.max_color_difference

    rejected_by_colour = 0
    for a, b, _ in near_pairs([h for _, h in hashed], cfg.max_phash_distance):
        i, j = hashed[a][0], hashed[b][0]
        if same_colours(i, j):
            groups.union(i, j, "near")
        else:
            rejected_by_colour += 1
    report["near_pairs_rejected_by_colour"] = rejected_by_colour
    vector_of: dict[int, np.ndarray] = {}

    if dataset.table(S.EMBEDDINGS).exists():
        emb = dataset.table(S.EMBEDDINGS).read(columns=[S.SAMPLE_ID, S.IMAGE_EMBEDDING])
        emb = emb.filter(pc.is_in(emb[S.SAMPLE_ID], value_set=scores[S.SAMPLE_ID]))
        rows = [position[s] for s in emb[S.SAMPLE_ID].to_pylist()]
        if rows:
            vectors = embedding_matrix(emb[S.IMAGE_EMBEDDING])
            vector_of = dict(zip(rows, vectors))
            for a, b, _ in semantic_pairs(vectors, cfg.semantic_threshold, cfg.cluster_size):
                groups.union(rows[a], rows[b], "semantic")
    report["semantic_pass_ran"] = int(dataset.table(S.EMBEDDINGS).exists())

    def relation(i: int, root: int) -> tuple[str, float | None]:
        """How row i relates to the row its group keeps; distance in that kind's own units, or
        None where i joined through other members and the distance to the kept row says nothing."""
        bits = (phash[i] ^ phash[root]).bit_count() if i in phash and root in phash else None
        cosine = float(vector_of[i] @ vector_of[root]) if i in vector_of and root in vector_of else None
        if digests[i] is not None and digests[i] == digests[root]:
            return "exact", 0.0
        if bits is not None and bits <= cfg.max_phash_distance and same_colours(i, root):
            return "near", float(bits)
        if cosine is not None and cosine >= cfg.semantic_threshold:
            return "semantic", 1.0 - cosine
        return groups.link[i], None  # joined through other members only

    out: dict[str, list] = {name: [] for name in DUPLICATES_SCHEMA.names}
    for i, sid in enumerate(ids):
        root = groups.find(i)
        if root != i:
            kind, distance = relation(i, root)
            out[S.SAMPLE_ID].append(sid)
            out["duplicate_of"].append(ids[root])
            out[S.KIND].append(kind)
            out["distance"].append(distance)
    kinds = out[S.KIND]
    report.update({kind: kinds.count(kind) for kind in ("exact", "near", "semantic")})
    return out, report
