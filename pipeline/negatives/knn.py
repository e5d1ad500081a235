"""kNN-mined negatives: the caption of the nearest *other* sample, by text or by image embedding.

NegCLIP's second source of hard negatives: a real caption of a similar item is fluent by
construction and differs in what matters. For every curated row with embeddings:

- knn_text: the caption whose text embedding is nearest to this caption's;
- knn_image: the caption of the image whose embedding is nearest to this image's.

A neighbour is skipped when it is not a negative at all:

- duplicate: the same duplicate group (table `duplicates`);
- same_image: the same image bytes;
- same_caption: the same caption text;
- too_similar: cosine at or above `max_cosine`, a near-duplicate the dedup thresholds let through.

Mining compares rows across shards, so like dedup it is a whole-dataset step. It reads only the
caption, hash and embedding columns, and writes table `neg_knn`, whose columns are those of
`neg_text` with `source_id` naming the neighbour. The view `negatives` unions the two.

Search is exact (a flat inner-product index) unless `foil index` has indexed exactly these rows:
then its autofaiss indexes, compressed and approximate for large datasets, are searched instead.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.embed.embed import embedding_matrix
from pipeline.embed.knn_index import INDEX
from pipeline.core.runners import run_dataset_step
from pipeline.core.stage import ConfigError, DatasetStep
from pipeline.core.store import Dataset

NEG_KNN = "neg_knn"
KNN_KINDS = ("knn_text", "knn_image")
GENERATOR = "foil.knn@1"


def _built_indexes(dataset: Dataset, ids: list[str]) -> dict[str, Any]:
    """The `foil index` indexes, if they hold exactly these rows in this order; else {}."""
    import faiss
    import pyarrow.parquet as pq

    root = Path(dataset.path(INDEX))
    meta_files = sorted((root / "metadata").glob("*.parquet")) if root.is_dir() else []
    if not meta_files:
        return {}
    indexed = [sid for f in meta_files for sid in pq.read_table(f, columns=[S.SAMPLE_ID])[S.SAMPLE_ID].to_pylist()]
    if indexed != ids:
        return {}  # built before a re-curation or a new embed: search exactly instead
    return {m: faiss.read_index(str(root / f"{m}.index")) for m in ("text", "image")}


class KnnNegativesStep(DatasetStep):
    """For every curated row, its nearest curated neighbour (text and image space) that is not a
    duplicate, not the same image and not the same caption, below `max_cosine`."""

    name = "negatives_knn"
    outputs = {NEG_KNN: S.NEG_TEXT_SCHEMA}
    inputs = (S.RAW, S.SCORES, S.EMBEDDINGS, "duplicates")

    def __init__(self, max_cosine: float = 0.98, k: int = 16):
        super().__init__()
        if not (isinstance(max_cosine, (int, float)) and 0 < max_cosine <= 1):
            raise ConfigError(f"negatives.knn.max_cosine: must be a cosine in (0, 1], got {max_cosine!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"negatives.knn.k: must be a positive integer, got {k!r}")
        self.max_cosine, self.k = max_cosine, k

    def config(self) -> dict[str, Any]:
        return {"max_cosine": self.max_cosine, "k": self.k}

    def input_state(self, dataset: Dataset) -> dict[str, Any]:
        # The curated view, not a table, is what is read: its thresholds are part of the input,
        # and so is the `foil index` build the search may use.
        index = Path(dataset.path(INDEX))
        built = sorted((str(f.relative_to(index)), f.stat().st_size) for f in index.rglob("*") if f.is_file()) if index.is_dir() else []
        return {**super().input_state(dataset), "curate": Catalog(dataset).thresholds(), "index": built}

    def compute(self, dataset: Dataset):
        out, stats = _mine(dataset, self.max_cosine, self.k)
        self.stats.rows_in, self.stats.rows_out = stats["rows_in"], stats["rows_out"]
        self.stats.dropped.update(stats["dropped"])
        self.stats.counts.update(stats["counts"])
        self.stats.seconds = stats["seconds"]
        self.search = stats["search"]
        yield NEG_KNN, "part-00000", pa.table(out, schema=S.NEG_TEXT_SCHEMA)


def mine(dataset: Dataset, max_cosine: float = 0.98, k: int = 16, overwrite: bool = False) -> dict[str, Any]:
    """Commit table `neg_knn`; returns counts made and skipped per kind and reason."""
    step = KnnNegativesStep(max_cosine, k)
    if not dataset.table(S.EMBEDDINGS).exists():
        raise ConfigError(f"{dataset.url} has no embeddings table: run `foil embed` before mining kNN negatives")
    Catalog(dataset).refresh()
    report = run_dataset_step(step, dataset, overwrite=overwrite)
    Catalog(dataset).refresh()
    stats = dict(report.stats)
    stats["search"] = getattr(step, "search", "kept: inputs unchanged since the last run")
    return stats


def _mine(dataset: Dataset, max_cosine: float, k: int) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    import faiss

    start = time.perf_counter()
    rows = Catalog(dataset).query(
        "SELECT c.sample_id, c.caption, s.sha256, coalesce(d.duplicate_of, c.sample_id) AS dup_group, "
        "e.image_embedding, e.text_embedding "
        "FROM curated c JOIN scores s USING (sample_id) JOIN embeddings e USING (sample_id) "
        "LEFT JOIN duplicates d USING (sample_id) ORDER BY c.sample_id"
    )
    n = rows.num_rows
    ids, captions = rows[S.SAMPLE_ID].to_pylist(), rows[S.CAPTION].to_pylist()
    sha, group = rows[S.SHA256].to_pylist(), rows["dup_group"].to_pylist()
    out: dict[str, list[Any]] = {name: [] for name in S.NEG_TEXT_SCHEMA.names}
    made: Counter = Counter()  # negatives written, per kind
    dropped: Counter = Counter()  # neighbours passed over (or rows left without one), per kind and reason
    built = _built_indexes(dataset, ids)
    for kind, column, modality in (("knn_text", S.TEXT_EMBEDDING, "text"), ("knn_image", S.IMAGE_EMBEDDING, "image")):
        if n < 2:
            dropped[f"{kind}:no_neighbour"] += n
            continue
        vectors = embedding_matrix(rows[column])
        index = built.get(modality)
        if index is None:
            index = faiss.IndexFlatIP(vectors.shape[1])  # exact cosine on normalised vectors
            index.add(vectors)
        sims, nbrs = index.search(vectors, min(k + 1, n))
        for i in range(n):
            chosen = None
            for sim, j in zip(sims[i], nbrs[i]):
                if j < 0 or j == i:
                    continue
                reason = (
                    "duplicate" if group[j] == group[i] else
                    "same_image" if sha[j] is not None and sha[j] == sha[i] else
                    "same_caption" if (captions[j] or "").strip().lower() == (captions[i] or "").strip().lower() else
                    "too_similar" if sim >= max_cosine else None
                )
                if reason is None:
                    chosen = (int(j), float(sim))
                    break
                dropped[f"{kind}:{reason}"] += 1
            if chosen is None:
                dropped[f"{kind}:no_neighbour"] += 1
                continue
            j, sim = chosen
            made[f"made:{kind}"] += 1
            row = {
                S.SAMPLE_ID: ids[i], S.KIND: kind, S.CAPTION: captions[i], S.NEG_CAPTION: captions[j],
                S.EDIT_SPAN: None, S.EDIT_FROM: None, S.EDIT_TO: None, S.GENERATOR: GENERATOR,
                S.CHECKS: ["not_duplicate", "different_image", "different_caption", f"cosine:{sim:.3f}<{max_cosine}"],
                S.SOURCE_ID: ids[j],
            }
            for key, value in row.items():
                out[key].append(value)
    stats = {
        "rows_in": n, "rows_out": len(out[S.SAMPLE_ID]), "dropped": dict(dropped), "counts": dict(made),
        "search": "knn_index (foil index)" if built else "exact (flat)", "seconds": round(time.perf_counter() - start, 3),
    }
    return out, stats
