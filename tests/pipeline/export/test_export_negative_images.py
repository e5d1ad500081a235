"""Export with image negatives and Img-Diff pairs, through the real catalog view and runner.

The tables of the image stages are written here as those stages write them (their schemas from
pipeline/core/schema.py), with their shards deliberately not aligned with raw's, to check that
each export shard reads only the neg_image / imgdiff shards holding its own rows."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline import steps
from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.runners import LocalRunner
from pipeline.core.store import Dataset, shard_name
from pipeline.export import export as E
from pipeline.stages import stage_class
from tests.conftest import make_emoji_raw, png_bytes


def _table(schema: pa.Schema, rows: list[dict]) -> pa.Table:
    return pa.table({name: [r.get(name) for r in rows] for name in schema.names}, schema=schema)


@pytest.fixture
def dataset(tmp_path, emoji_dir, few_emoji):
    ds = Dataset(tmp_path / "ds")
    make_emoji_raw(ds, emoji_dir, few_emoji[:12], shards=2)  # 6 rows per raw shard
    LocalRunner(progress=False).run(stage_class("score"), {}, ds, S.RAW, S.SCORES)
    raw = ds.table(S.RAW).read(columns=[S.SAMPLE_ID, S.CAPTION, S.IMAGE]).to_pylist()
    text = [{S.SAMPLE_ID: r[S.SAMPLE_ID], S.KIND: "replace_object", S.CAPTION: r[S.CAPTION], S.NEG_CAPTION: f"not {r[S.CAPTION]}"} for r in raw]
    ds.table(S.NEG_TEXT).write_shard(shard_name(0), _table(S.NEG_TEXT_SCHEMA, text))
    ds.table(S.NEG_TEXT).write_manifest("negatives", {}, [S.RAW])
    # neg_image: one shard holding rows of both raw shards; a second shard nobody needs
    mined = [  # row 0 (raw shard 0) and row 7 (raw shard 1) get a real image of another row
        {S.SAMPLE_ID: raw[0][S.SAMPLE_ID], S.KIND: "replace_object", S.CAPTION: raw[0][S.CAPTION], S.NEG_CAPTION: raw[1][S.CAPTION],
         S.METHOD: "mined", S.SOURCE_ID: raw[1][S.SAMPLE_ID], S.TRAINABLE: True, S.IMAGE: raw[1][S.IMAGE]},
        {S.SAMPLE_ID: raw[7][S.SAMPLE_ID], S.KIND: "replace_object", S.CAPTION: raw[7][S.CAPTION], S.NEG_CAPTION: raw[8][S.CAPTION],
         S.METHOD: "mined", S.SOURCE_ID: raw[8][S.SAMPLE_ID], S.TRAINABLE: True, S.IMAGE: raw[8][S.IMAGE]},
        # made by a random-weight pipeline: flagged, never exported
        {S.SAMPLE_ID: raw[2][S.SAMPLE_ID], S.KIND: "replace_object", S.CAPTION: raw[2][S.CAPTION], S.NEG_CAPTION: "a tiny p2p picture",
         S.METHOD: "p2p", S.PIPELINE: "tiny:txt2img", S.TRAINABLE: False, S.IMAGE: png_bytes((1, 2, 3))},
    ]
    unused = [{S.SAMPLE_ID: "f" * 16, S.KIND: "replace_object", S.CAPTION: "x", S.NEG_CAPTION: "y", S.METHOD: "mined",
               S.TRAINABLE: True, S.IMAGE: png_bytes((9, 9, 9))}]
    ds.table(S.NEG_IMAGE).write_shard(shard_name(0), _table(S.NEG_IMAGE_SCHEMA, mined))
    ds.table(S.NEG_IMAGE).write_shard(shard_name(1), _table(S.NEG_IMAGE_SCHEMA, unused))
    ds.table(S.NEG_IMAGE).write_manifest("neg_image", {}, [S.NEG_TEXT])
    pairs = [
        {S.PAIR_ID: "pair-kept", S.CAPTION_A: "a red apple", S.CAPTION_B: "a green apple", S.METHOD: "import", S.TRAINABLE: True,
         S.IMAGE_A: png_bytes((200, 0, 0)), S.IMAGE_B: png_bytes((0, 200, 0))},
        {S.PAIR_ID: "pair-dropped", S.CAPTION_A: "a cat", S.CAPTION_B: "a dog", S.METHOD: "import", S.TRAINABLE: True,
         S.FILTER_REASON: "too_similar", S.IMAGE_A: png_bytes((5, 5, 5)), S.IMAGE_B: png_bytes((6, 6, 6))},
        {S.PAIR_ID: "pair-tiny", S.CAPTION_A: "a cup", S.CAPTION_B: "a mug", S.METHOD: "p2p", S.TRAINABLE: False,
         S.IMAGE_A: png_bytes((7, 7, 7)), S.IMAGE_B: png_bytes((8, 8, 8))},
    ]
    ds.table(S.IMGDIFF).write_shard(shard_name(0), _table(S.IMGDIFF_SCHEMA, pairs))
    ds.table(S.IMGDIFF).write_manifest("imgdiff", {}, [])
    Catalog(ds).refresh()
    return ds, raw, pairs


def test_negative_images_and_imgdiff_pairs_export_with_their_counts(dataset, monkeypatch):
    ds, raw, pairs = dataset
    reads: list[tuple[str, str, frozenset]] = []
    real_read = E._read_rows

    def recording(dataset, table, shard, key, wanted, columns):
        reads.append((table, shard, frozenset(wanted)))
        return real_read(dataset, table, shard, key, wanted, columns)

    monkeypatch.setattr(E, "_read_rows", recording)
    report = steps.export(ds, {"eval_percent": 20}, LocalRunner(progress=False))
    rows = {r[S.SAMPLE_ID]: r for r in ds.table(S.TRAIN).read().to_pylist()}

    assert len(rows) == 12 + 2  # every curated row, and the kept pair as two rows
    first, seventh, third = rows[raw[0][S.SAMPLE_ID]], rows[raw[7][S.SAMPLE_ID]], rows[raw[2][S.SAMPLE_ID]]
    # a mined negative image carries its own caption as the negative caption
    assert first[S.NEG_IMAGE_COL] == raw[1][S.IMAGE] and first[S.NEG_CAPTION] == raw[1][S.CAPTION] and first[S.IMAGE] == raw[0][S.IMAGE]
    assert seventh[S.NEG_IMAGE_COL] == raw[8][S.IMAGE] and seventh[S.NEG_CAPTION] == raw[8][S.CAPTION]
    # the random-weight p2p image is not exported: that row keeps its text negative only
    assert third[S.NEG_IMAGE_COL] is None and third[S.NEG_CAPTION] == f"not {raw[2][S.CAPTION]}"
    # the kept pair: two rows, each the other's hard negative, in the same split
    pair_rows = [r for r in rows.values() if r[S.NEG_KIND] == "imgdiff"]
    by_caption = {r[S.CAPTION]: r for r in pair_rows}
    a, b = by_caption["a red apple"], by_caption["a green apple"]
    assert (a[S.IMAGE], a[S.NEG_IMAGE_COL], a[S.NEG_CAPTION]) == (pairs[0][S.IMAGE_A], pairs[0][S.IMAGE_B], "a green apple")
    assert (b[S.IMAGE], b[S.NEG_IMAGE_COL], b[S.NEG_CAPTION]) == (pairs[0][S.IMAGE_B], pairs[0][S.IMAGE_A], "a red apple")
    assert a[S.SPLIT] == b[S.SPLIT] and len(pair_rows) == 2
    with_image = sum(r[S.NEG_IMAGE_COL] is not None for r in rows.values())
    counts = report["stats"]["counts"]
    assert counts["negative_image:mined"] == 2 and counts["negative_image:imgdiff"] == 2
    assert counts["negative_image:none"] == len(rows) - with_image == 10
    # Each export shard read the one neg_image shard holding its rows, for those rows only; the
    # unused neg_image shard was never opened; the pair's imgdiff shard was read once.
    neg_reads = [r for r in reads if r[0] == S.NEG_IMAGE]
    assert sorted(neg_reads, key=lambda r: sorted(r[2])) == sorted(
        [(S.NEG_IMAGE, shard_name(0), frozenset({raw[0][S.SAMPLE_ID]})), (S.NEG_IMAGE, shard_name(0), frozenset({raw[7][S.SAMPLE_ID]}))],
        key=lambda r: sorted(r[2]),
    )
    assert [r[:2] for r in reads if r[0] == S.IMGDIFF] == [(S.IMGDIFF, shard_name(0))]

    tars = E.write_webdataset(ds)
    import webdataset as wds

    samples = {s["__key__"]: s for t in tars for s in wds.WebDataset(t, shardshuffle=False)}
    assert samples[raw[0][S.SAMPLE_ID]]["neg.png"] == raw[1][S.IMAGE]
    assert "neg.png" not in samples[raw[2][S.SAMPLE_ID]]
    assert sum("neg.png" in s for s in samples.values()) == with_image == 4


def test_export_without_image_tables_still_exports_text_negatives(tmp_path, emoji_dir, few_emoji):
    ds = Dataset(tmp_path / "ds")
    make_emoji_raw(ds, emoji_dir, few_emoji[:6], shards=1)
    LocalRunner(progress=False).run(stage_class("score"), {}, ds, S.RAW, S.SCORES)
    Catalog(ds).refresh()
    report = steps.export(ds, {"eval_percent": 0}, LocalRunner(progress=False))
    train = ds.table(S.TRAIN).read()
    assert train.num_rows == 6 and train[S.NEG_IMAGE_COL].null_count == 6
    assert report["stats"]["counts"]["negative_image:none"] == 6


def test_a_recipe_cannot_point_export_at_another_dataset(tmp_path):
    from pipeline.core.stage import ConfigError

    with pytest.raises(ConfigError, match="export.dataset: set by foil itself"):
        steps.export(Dataset(tmp_path / "ds"), {"dataset": "/elsewhere"}, LocalRunner(progress=False))
