"""kNN search over a dataset's embeddings: clip-retrieval's layout and indexing, and queries.

`build` writes the embeddings of the curated rows (or of every embedded row) in clip-retrieval's
layout, then has clip-retrieval's indexer (autofaiss) build one index per modality:

    <dataset>/clip_retrieval/img_emb/img_emb_00000.npy      float16 [N, D], L2-normalised
    <dataset>/clip_retrieval/text_emb/text_emb_00000.npy
    <dataset>/clip_retrieval/metadata/metadata_00000.parquet sample_id, caption, url (same order)
    <dataset>/knn_index/image.index, text.index, metadata/   what `clip-retrieval back` serves

File numbers are zero-padded, so name order is row order for every reader. `query` encodes a
text (or an image) with the model that made the embeddings (read from the embed stage's
manifest) and returns the nearest rows with their captions.
"""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.embed.embed import embedding_matrix
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset, atomic_write, drop_empty_tmp

LAYOUT = "clip_retrieval"
INDEX = "knn_index"
ROWS_PER_FILE = 100_000
STATE_FILE = "foil_index.json"  # inside the index folder: the input state it was built from


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def export_layout(dataset: Dataset, curated_only: bool = True) -> dict[str, Any]:
    """Write the clip-retrieval layout under `<dataset>/clip_retrieval/`; returns counts."""
    if not dataset.table(S.EMBEDDINGS).exists():
        raise ConfigError(f"{dataset.url} has no embeddings table: run `foil embed` first")
    catalog = Catalog(dataset)
    catalog.refresh()
    rows_from = "curated c JOIN embeddings e USING (sample_id)" if curated_only else "embeddings e JOIN raw c USING (sample_id)"
    table = catalog.query(
        f"SELECT e.sample_id, c.caption, c.url, e.image_embedding, e.text_embedding FROM {rows_from} ORDER BY e.sample_id"
    )
    if table.num_rows == 0:
        raise ConfigError(f"{dataset.url}: no {'curated ' if curated_only else ''}rows with embeddings to index")
    root = Path(dataset.path(LAYOUT))
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True)
    files = 0
    for start in range(0, table.num_rows, ROWS_PER_FILE):
        part = table.slice(start, ROWS_PER_FILE)
        name = f"{files:05d}"
        for column, sub in ((S.IMAGE_EMBEDDING, "img_emb"), (S.TEXT_EMBEDDING, "text_emb")):
            data = _npy_bytes(embedding_matrix(part[column], normalise=False).astype(np.float16))  # as stored
            atomic_write(dataset.fs, str(root / sub / f"{sub}_{name}.npy"), lambda f, d=data: f.write(d))
        meta = part.select([S.SAMPLE_ID, S.CAPTION, S.URL])
        atomic_write(dataset.fs, str(root / "metadata" / f"metadata_{name}.parquet"), lambda f, m=meta: pq.write_table(m, f))
        files += 1
    for sub in ("img_emb", "text_emb", "metadata"):
        drop_empty_tmp(root / sub)
    return {"rows": table.num_rows, "files": files, "dim": len(table[S.IMAGE_EMBEDDING][0]), "layout": str(root)}


def input_state(dataset: Dataset, curated_only: bool = True) -> dict[str, Any]:
    """What an index is built from: the indexed sample ids (a digest), and the embeddings'
    shards and config. An index whose recorded state equals this one is up to date."""
    import hashlib
    import json

    if not dataset.table(S.EMBEDDINGS).exists():
        raise ConfigError(f"{dataset.url} has no embeddings table: run `foil embed` first")
    rows_from = "curated c JOIN embeddings e USING (sample_id)" if curated_only else "embeddings e JOIN raw c USING (sample_id)"
    ids = Catalog(dataset).query(f"SELECT e.sample_id FROM {rows_from} ORDER BY e.sample_id")[S.SAMPLE_ID].to_pylist()
    embeddings = dataset.table(S.EMBEDDINGS)
    return json.loads(json.dumps({
        "curated_only": curated_only,
        "rows": len(ids),
        "sample_ids": hashlib.blake2b("\n".join(ids).encode(), digest_size=16).hexdigest(),
        "embedding_shards": {name: info.rows for name, info in embeddings.finished_shards().items()},
        "embedding_config": embeddings.manifest().get("config", {}),
    }, default=str))


def build(dataset: Dataset, curated_only: bool = True, max_index_memory_usage: str = "4G", current_memory_available: str = "8G") -> dict[str, Any]:
    """Export the layout, then index it with clip-retrieval's `clip_index` (autofaiss). An index
    built from the same input state (`input_state`, recorded in `knn_index/foil_index.json`) is
    kept as it is: nothing to do."""
    import json

    from clip_retrieval.clip_index import clip_index

    start = time.perf_counter()
    Catalog(dataset).refresh()
    state = input_state(dataset, curated_only)
    index_dir = Path(dataset.path(INDEX))
    stamp = index_dir / STATE_FILE
    if stamp.is_file() and (index_dir / "image.index").is_file() and json.loads(stamp.read_text()) == state:
        return {"rows": state["rows"], "index": str(index_dir), "unchanged": True, "seconds": round(time.perf_counter() - start, 2)}
    report = export_layout(dataset, curated_only)
    tmp = index_dir.with_name(INDEX + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    clip_index(report["layout"], str(tmp), max_index_memory_usage=max_index_memory_usage,
               current_memory_available=current_memory_available, copy_metadata=True, nb_cores=None)
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    shutil.rmtree(index_dir, ignore_errors=True)
    tmp.rename(index_dir)  # a query never sees a half-built index
    report.update({"index": str(index_dir), "seconds": round(time.perf_counter() - start, 2)})
    return report


class KnnIndex:
    """A built index, loaded with the model that made its embeddings."""

    def __init__(self, dataset: Dataset):
        import faiss

        index_dir = Path(dataset.path(INDEX))
        if not (index_dir / "image.index").is_file():
            raise ConfigError(f"{dataset.url} has no kNN index: run `foil index --dataset {dataset.url}` first")
        self.indexes = {m: faiss.read_index(str(index_dir / f"{m}.index")) for m in ("image", "text")}
        self.metadata = pa.concat_tables(pq.read_table(p) for p in sorted((index_dir / "metadata").glob("*.parquet")))
        config = dataset.table(S.EMBEDDINGS).manifest().get("config", {}).get("params", {})
        self.model_name = config.get("model", "foil-tiny-vit")
        self.pretrained = config.get("pretrained")
        self._model = None

    def _load(self) -> None:
        from pipeline.models import factory as M

        self._model, self._tokenize, self._size = M.load_encoder(self.model_name, self.pretrained)

    def encode_text(self, text: str) -> np.ndarray:
        from pipeline.models import factory as M

        if self._model is None:
            self._load()
        return M.encode_texts(self._model, self._tokenize, [text])

    def encode_image(self, blob: bytes) -> np.ndarray:
        from pipeline.models import factory as M
        from pipeline.models.images import decode_image

        if self._model is None:
            self._load()
        return M.encode_images(self._model, [decode_image(blob, self._size)])

    def search(self, query: np.ndarray, against: str = "image", k: int = 10) -> list[dict[str, Any]]:
        if against not in self.indexes:
            raise ConfigError(f"--against: must be image or text, got {against!r}")
        if k <= 0:
            raise ConfigError(f"-k: must be positive, got {k}")
        scores, ids = self.indexes[against].search(np.ascontiguousarray(query, dtype=np.float32), k)
        rows = []
        for rank, (score, i) in enumerate(zip(scores[0], ids[0]), start=1):
            if i < 0:
                continue
            meta = {name: self.metadata[name][int(i)].as_py() for name in self.metadata.column_names}
            rows.append({"rank": rank, "score": round(float(score), 4), **meta})
        return rows
