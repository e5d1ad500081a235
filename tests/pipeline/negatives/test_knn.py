"""kNN-mined negatives: the nearest other caption/image, skipping what is not a negative."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.negatives.knn import NEG_KNN, mine
from pipeline.core.runners import LocalRunner
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset, shard_name
from pipeline.stages import stage_class
from tests.conftest import make_emoji_raw


def _unit(*v: float) -> np.ndarray:
    x = np.array(v, dtype=np.float32)
    return x / np.linalg.norm(x)


def _fixed(vectors: list[np.ndarray]) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.stack(vectors).astype(np.float16).ravel()), 4)


def test_nearest_other_caption_and_image_skip_copies_and_near_copies(tmp_path, emoji_dir):
    from pipeline.demo.sample import emoji_items

    items = emoji_items(emoji_dir)[200:205]
    ds = Dataset(tmp_path / "ds")
    make_emoji_raw(ds, emoji_dir, items, shards=1)
    LocalRunner(progress=False).run(stage_class("score"), {}, ds, S.RAW, S.SCORES)
    raw = ds.table(S.RAW).read(columns=[S.SAMPLE_ID, S.CAPTION])
    ids = raw[S.SAMPLE_ID].to_pylist()
    captions = dict(zip(ids, raw[S.CAPTION].to_pylist()))
    a, b, c, d, e = ids
    # Text: b is a near-copy of a's caption (cosine 0.99), c the next nearest (0.8).
    # Image: d is nearest to a, but at cosine 0.995 (a near-duplicate the dedup let through); e next.
    text = {a: _unit(1, 0, 0, 0), b: _unit(0.99, 0.141, 0, 0), c: _unit(0.8, 0.6, 0, 0), d: _unit(0, 0, 1, 0), e: _unit(0, 0, 0, 1)}
    image = {a: _unit(1, 0, 0, 0), d: _unit(0.995, 0.0999, 0, 0), e: _unit(0.7, 0.714, 0, 0), b: _unit(0, 0, 1, 0), c: _unit(0, 0, 0, 1)}
    emb = pa.table(
        {
            S.SAMPLE_ID: ids,
            S.IMAGE_EMBEDDING: _fixed([image[i] for i in ids]),
            S.TEXT_EMBEDDING: _fixed([text[i] for i in ids]),
            S.CLIP_SCORE: pa.array([0.0] * 5, pa.float32()),
            S.MODEL: ["hand-made"] * 5,
        },
        schema=S.embeddings_schema(4),
    )
    ds.table(S.EMBEDDINGS).write_shard(shard_name(0), emb)
    ds.table(S.EMBEDDINGS).write_manifest("embed", {}, [S.RAW])

    stats = mine(ds, max_cosine=0.98)
    rows = {(r[S.SAMPLE_ID], r[S.KIND]): r for r in ds.table(NEG_KNN).read().to_pylist()}
    assert rows[(a, "knn_text")][S.SOURCE_ID] == c  # b skipped as too similar
    assert rows[(a, "knn_text")][S.NEG_CAPTION] == captions[c]
    assert rows[(a, "knn_image")][S.SOURCE_ID] == e  # d skipped as a near-duplicate image
    assert all(r[S.SOURCE_ID] != r[S.SAMPLE_ID] and r[S.NEG_CAPTION] != r[S.CAPTION] for r in rows.values())
    assert stats["dropped"]["knn_text:too_similar"] >= 1 and stats["dropped"]["knn_image:too_similar"] >= 1
    assert stats["counts"] == {"made:knn_text": 5, "made:knn_image": 5}

    cat = Catalog(ds)
    kinds = {r["kind"]: r["negatives"] for r in cat.query("select * from neg_text_kinds").to_pylist()}
    assert kinds == {"knn_image": 5, "knn_text": 5}  # neg_text absent: the view still shows neg_knn
    reasons = {r["reason"] for r in cat.query("select * from drop_reasons where table_name = 'neg_knn'").to_pylist()}
    assert "knn_text:too_similar" in reasons


def test_mining_needs_embeddings_and_valid_settings(tmp_path, emoji_dir):
    from pipeline.demo.sample import emoji_items

    ds = Dataset(tmp_path / "ds")
    make_emoji_raw(ds, emoji_dir, emoji_items(emoji_dir)[:3], shards=1)
    with pytest.raises(ConfigError, match="no embeddings table: run `foil embed`"):
        mine(ds)
    from pipeline import steps

    with pytest.raises(ConfigError, match="negatives.knn needs embeddings"):  # before any negative is made
        steps.negatives(ds, {}, LocalRunner(progress=False), knn={})
    assert not ds.table(S.NEG_TEXT).exists()
    with pytest.raises(ConfigError, match=r"negatives\.knn\.max_cosine"):
        mine(ds, max_cosine=1.5)


def test_negatives_step_mines_knn_after_real_embeddings_and_the_report_shows_samples(tmp_path, emoji_dir):
    from pipeline import steps
    from pipeline.report import build_summary, render_markdown
    from pipeline.demo.sample import emoji_items

    ds = Dataset(tmp_path / "ds")
    make_emoji_raw(ds, emoji_dir, emoji_items(emoji_dir)[300:340], shards=2)
    runner = LocalRunner(progress=False)
    steps.score(ds, runner)
    steps.embed(ds, {"model": "foil-tiny-vit", "batch_size": 16}, runner)
    out = steps.negatives(ds, {"kinds": ["replace_object", "add_attribute"]}, runner, knn={"max_cosine": 0.999})
    assert out["knn"]["counts"]["made:knn_text"] + out["knn"]["dropped"].get("knn_text:no_neighbour", 0) == 40
    cat = Catalog(ds)
    bad = cat.query("select count(*) n from neg_knn k left join curated c on c.sample_id = k.source_id where c.sample_id is null")
    assert bad.column("n")[0].as_py() == 0  # every neighbour is itself a curated row
    summary = build_summary(ds)
    per_kind = Counter(r["kind"] for r in summary["negatives_sample"])
    assert set(per_kind) == {"replace_object", "add_attribute", "knn_text", "knn_image"}
    assert max(per_kind.values()) == 30  # 40 captions, at most 30 shown per kind
    assert "## negatives_sample" in render_markdown(summary)


def test_mining_reuses_the_knn_index_when_it_holds_the_same_rows(tmp_path, emoji_dir):
    from pipeline import steps
    from pipeline.embed.knn_index import build
    from pipeline.demo.sample import emoji_items

    ds = Dataset(tmp_path / "ds")
    make_emoji_raw(ds, emoji_dir, emoji_items(emoji_dir)[500:560], shards=1)
    runner = LocalRunner(progress=False)
    steps.score(ds, runner)
    steps.embed(ds, {"model": "foil-tiny-vit"}, runner)
    exact = mine(ds, max_cosine=0.999)
    exact_rows = ds.table(NEG_KNN).read()
    build(ds)
    indexed = mine(ds, max_cosine=0.999)
    assert (exact["search"], indexed["search"]) == ("exact (flat)", "knn_index (foil index)")
    indexed_rows = ds.table(NEG_KNN).read()
    # A random-init model puts every emoji within a few hundredths of cosine, so exact and
    # indexed search may break near-ties differently; both must give valid negatives.
    for rows in (exact_rows, indexed_rows):
        assert rows.num_rows > 0 and all(r[S.SOURCE_ID] != r[S.SAMPLE_ID] for r in rows.to_pylist())
    steps.curate(ds, {"max_caption_words": 3})  # the index no longer matches the curated rows
    assert mine(ds, max_cosine=0.999)["search"] == "exact (flat)"
