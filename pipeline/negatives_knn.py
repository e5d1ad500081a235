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

from pipeline import schema as S
from pipeline.catalog import Catalog
from pipeline.embed import embedding_matrix
from pipeline.stage import ConfigError
from pipeline.store import Dataset

NEG_KNN = "neg_knn"
KNN_KINDS = ("knn_text", "knn_image")
GENERATOR = "foil.knn@1"


def _built_indexes(dataset: Dataset, ids: list[str]) -> dict[str, Any]:
    """The `foil index` indexes, if they hold exactly these rows in this order; else {}."""
    import faiss
    import pyarrow.parquet as pq

    from pipeline.knn_index import INDEX

    root = Path(dataset.path(INDEX))
    meta_files = sorted((root / "metadata").glob("*.parquet")) if root.is_dir() else []
    if not meta_files:
        return {}
    indexed = [sid for f in meta_files for sid in pq.read_table(f, columns=[S.SAMPLE_ID])[S.SAMPLE_ID].to_pylist()]
    if indexed != ids:
        return {}  # built before a re-curation or a new embed: search exactly instead
    return {m: faiss.read_index(str(root / f"{m}.index")) for m in ("text", "image")}


def mine(dataset: Dataset, max_cosine: float = 0.98, k: int = 16) -> dict[str, Any]:
    """Write table `neg_knn`; returns counts made and skipped per kind and reason."""
    import faiss

    if not (isinstance(max_cosine, (int, float)) and 0 < max_cosine <= 1):
        raise ConfigError(f"negatives.knn.max_cosine: must be a cosine in (0, 1], got {max_cosine!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"negatives.knn.k: must be a positive integer, got {k!r}")
    if not dataset.table(S.EMBEDDINGS).exists():
        raise ConfigError(f"{dataset.url} has no embeddings table: run `foil embed` before mining kNN negatives")
    start = time.perf_counter()
    catalog = Catalog(dataset)
    catalog.refresh()
    rows = catalog.query(
        "SELECT c.sample_id, c.caption, s.sha256, coalesce(d.duplicate_of, c.sample_id) AS dup_group, "
        "e.image_embedding, e.text_embedding "
        "FROM curated c JOIN scores s USING (sample_id) JOIN embeddings e USING (sample_id) "
        "LEFT JOIN duplicates d USING (sample_id) ORDER BY c.sample_id"
    )
    n = rows.num_rows
    ids, captions = rows[S.SAMPLE_ID].to_pylist(), rows[S.CAPTION].to_pylist()
    sha, group = rows[S.SHA256].to_pylist(), rows["dup_group"].to_pylist()
    out: dict[str, list[Any]] = {name: [] for name in S.NEG_TEXT_SCHEMA.names}
    counts: Counter = Counter()
    built = _built_indexes(dataset, ids)
    for kind, column, modality in (("knn_text", S.TEXT_EMBEDDING, "text"), ("knn_image", S.IMAGE_EMBEDDING, "image")):
        if n < 2:
            counts[f"{kind}:no_neighbour"] += n
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
                counts[f"{kind}:{reason}"] += 1
            if chosen is None:
                counts[f"{kind}:no_neighbour"] += 1
                continue
            j, sim = chosen
            counts[f"made:{kind}"] += 1
            row = {
                S.SAMPLE_ID: ids[i], S.KIND: kind, S.CAPTION: captions[i], S.NEG_CAPTION: captions[j],
                S.EDIT_SPAN: None, S.EDIT_FROM: None, S.EDIT_TO: None, S.GENERATOR: GENERATOR,
                S.CHECKS: ["not_duplicate", "different_image", "different_caption", f"cosine:{sim:.3f}<{max_cosine}"],
                S.SOURCE_ID: ids[j],
            }
            for key, value in row.items():
                out[key].append(value)
    table = dataset.table(NEG_KNN)
    table.clear()
    made = {k: v for k, v in counts.items() if k.startswith("made:")}
    dropped = {k: v for k, v in counts.items() if not k.startswith("made:")}
    stats = {
        "rows_in": n, "rows_out": len(out[S.SAMPLE_ID]), "dropped": dropped, "counts": made,
        "search": "knn_index (foil index)" if built else "exact (flat)", "seconds": round(time.perf_counter() - start, 3),
    }
    table.write_shard("part-00000", pa.table(out, schema=S.NEG_TEXT_SCHEMA), stats=stats)
    table.write_manifest("negatives_knn", {"stage": "negatives_knn", "max_cosine": max_cosine, "k": k}, ["curated", S.EMBEDDINGS])
    catalog.refresh()
    return stats
