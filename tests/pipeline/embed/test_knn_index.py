"""`foil index` / `foil knn`: clip-retrieval's layout, indexed by clip-retrieval's indexer
(autofaiss), and queries that find an item from its own caption or image."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.core import schema as S
from pipeline import steps
from pipeline.core.catalog import Catalog
from pipeline.embed.knn_index import KnnIndex, build
from pipeline.core.runners import LocalRunner
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset
from tests.conftest import make_emoji_raw


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, emoji_dir):
    from pipeline.demo.sample import emoji_items

    ds = Dataset(tmp_path_factory.mktemp("knn") / "ds")
    make_emoji_raw(ds, emoji_dir, emoji_items(emoji_dir)[400:640], shards=2)
    runner = LocalRunner(progress=False)
    steps.score(ds, runner)
    steps.embed(ds, {"model": "foil-tiny-vit", "batch_size": 64}, runner)
    steps.curate(ds, {"max_caption_words": 6})  # the index holds curated rows only
    return ds, build(ds)


def test_layout_is_clip_retrievals_and_the_index_covers_the_curated_rows(indexed):
    ds, report = indexed
    curated = Catalog(ds).query("select count(*) from curated").column(0)[0].as_py()
    assert 0 < report["rows"] == curated < 240
    root = ds.path("clip_retrieval")
    img = np.load(f"{root}/img_emb/img_emb_00000.npy")
    txt = np.load(f"{root}/text_emb/text_emb_00000.npy")
    meta = pq.read_table(f"{root}/metadata/metadata_00000.parquet")
    assert img.shape == txt.shape == (curated, report["dim"]) and img.dtype == np.float16
    assert meta.column_names == [S.SAMPLE_ID, S.CAPTION, S.URL] and meta.num_rows == curated
    assert np.allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1, atol=1e-2)
    index = KnnIndex(ds)
    assert {m: i.ntotal for m, i in index.indexes.items()} == {"image": curated, "text": curated}


def test_an_items_own_caption_and_image_find_it(indexed):
    ds, _ = indexed
    index = KnnIndex(ds)
    rows = Catalog(ds).query("select c.sample_id, c.caption, r.image from curated c join raw r using (sample_id) order by sample_id limit 40").to_pylist()
    for row in rows:
        top = index.search(index.encode_text(row["caption"]), against="text", k=1)[0]
        assert top["sample_id"] == row["sample_id"] and top["caption"] == row["caption"]
        nearest = index.search(index.encode_image(row["image"]), against="image", k=3)
        assert row["sample_id"] in [n["sample_id"] for n in nearest] and nearest[0]["score"] > 0.99


def test_cli_knn_prints_neighbours_with_captions(indexed):
    ds, _ = indexed
    caption = Catalog(ds).query("select caption from curated order by sample_id limit 1").column(0)[0].as_py()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "knn", "--dataset", ds.url, "--text", caption, "-k", "3", "--against", "text", "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3] and rows[0]["caption"] == caption
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]


def test_knn_without_an_index_says_what_to_run(tmp_path):
    with pytest.raises(ConfigError, match="run `foil index"):
        KnnIndex(Dataset(tmp_path / "empty"))


def test_an_index_of_unchanged_inputs_is_kept_and_a_new_curation_rebuilds_it(indexed):
    from pathlib import Path

    ds, first = indexed
    index_file = Path(ds.path("knn_index")) / "image.index"
    built_at = index_file.stat().st_mtime_ns
    again = build(ds)
    assert again["unchanged"] and again["rows"] == first["rows"] and index_file.stat().st_mtime_ns == built_at
    steps.curate(ds, {"max_caption_words": 4})  # fewer curated rows: a different index
    rebuilt = build(ds)
    assert "unchanged" not in rebuilt and rebuilt["rows"] < first["rows"]
    assert KnnIndex(ds).indexes["image"].ntotal == rebuilt["rows"]
