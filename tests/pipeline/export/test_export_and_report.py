from __future__ import annotations

import json

import pyarrow as pa

from pipeline.core import schema as S
from pipeline.export.export import ExportStage, split_of
from pipeline.report import render_markdown


def test_split_is_stable_and_close_to_the_asked_share():
    ids = [S.sample_id(f"http://h/{i}", "c") for i in range(4000)]
    splits = [split_of(i, 10) for i in ids]
    assert splits == [split_of(i, 10) for i in ids]
    share = splits.count("eval") / len(ids)
    assert 0.08 < share < 0.12


def test_export_keeps_rows_with_images_and_counts_the_rest():
    batch = pa.RecordBatch.from_pydict(
        {
            S.SAMPLE_ID: ["00000001" + "0" * 8, "ffffffff" + "0" * 8, "00000002" + "0" * 8],
            S.CAPTION: ["a", "b", "c"],
            S.NEG_CAPTION: ["x", None, "z"],
            S.NEG_KIND: ["replace_object", None, "replace_attribute"],
            S.IMAGE: [b"img", b"img", None],
            S.NEG_IMAGE_METHOD: [None, None, None],
            S.NEG_IMAGE_SHARD: [None, None, None],
            S.PAIR_ID: [None, None, None],
            S.PAIR_SIDE: [None, None, None],
            S.PAIR_SHARD: [None, None, None],
        }
    )
    stage = ExportStage(eval_percent=10)
    out = pa.Table.from_batches(list(stage.run(iter([batch]))))
    assert out.schema == S.TRAIN_SCHEMA
    assert out[S.CAPTION].to_pylist() == ["a", "b"]
    assert out[S.SPLIT].to_pylist() == ["eval", "train"]  # 0x00000001 % 100 < 10; 0xffffffff % 100 = 95
    assert stage.stats.dropped == {"no_image": 1}
    assert stage.stats.counts["rows_without_negative"] == 1
    assert stage.stats.counts["negative_image:none"] == 2


def test_summary_markdown_has_a_section_per_entry():
    text = render_markdown({"dataset": "/d", "funnel": [{"reason": "kept", "rows": 3}], "timings_seconds": {"crawl": 1.5}})
    assert "## funnel" in text and "| kept | 3 |" in text and "| crawl | 1.5 |" in text


def test_webdataset_tars_read_back_with_the_webdataset_package(tmp_path, emoji_dir, few_emoji):
    import webdataset as wds

    from pipeline.export.export import write_webdataset
    from pipeline.core.store import Dataset

    ds = Dataset(tmp_path / "ds")
    rows = {name: [] for name in S.TRAIN_SCHEMA.names}
    for i, it in enumerate(few_emoji[:10]):
        rows[S.SAMPLE_ID].append(f"{i:016x}")
        rows[S.CAPTION].append(it.caption)
        rows[S.NEG_CAPTION].append(f"not {it.caption}" if i % 2 else None)
        rows[S.NEG_KIND].append("replace_object" if i % 2 else None)
        rows[S.SPLIT].append("eval" if i == 0 else "train")
        rows[S.IMAGE].append((emoji_dir / "img/google/64" / it.image).read_bytes())
        rows[S.NEG_IMAGE_COL].append((emoji_dir / "img/google/64" / few_emoji[i + 1].image).read_bytes() if i % 2 else None)
    ds.table(S.TRAIN).write_shard("part-00000", pa.table(rows, schema=S.TRAIN_SCHEMA))
    ds.table(S.TRAIN).write_manifest("export", {}, [S.RAW])

    paths = write_webdataset(ds)
    assert [p.split("train_wds/")[1] for p in paths] == ["train/part-00000.tar", "eval/part-00000.tar"]
    samples = list(wds.WebDataset(paths[0], shardshuffle=False))
    assert [s["__key__"] for s in samples] == rows[S.SAMPLE_ID][1:]
    first = samples[0]
    assert first["png"] == rows[S.IMAGE][1]
    assert first["txt"].decode() == rows[S.CAPTION][1]
    assert first["neg.txt"].decode() == rows[S.NEG_CAPTION][1]
    assert "neg.txt" not in samples[1]  # no negative for that row
    assert first["neg.png"] == rows[S.NEG_IMAGE_COL][1] and "neg.png" not in samples[1]
    assert json.loads(first["json"]) == {"sample_id": rows[S.SAMPLE_ID][1], "negative_kind": "replace_object", "split": "train"}
    assert not [p for p in (tmp_path / "ds" / "train_wds" / "train").iterdir() if p.name.startswith(".")]
