from __future__ import annotations

import pyarrow as pa

from pipeline import schema as S
from pipeline.export import ExportStage, split_of
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
        }
    )
    stage = ExportStage(eval_percent=10)
    out = pa.Table.from_batches(list(stage.run(iter([batch]))))
    assert out.schema == S.TRAIN_SCHEMA
    assert out[S.CAPTION].to_pylist() == ["a", "b"]
    assert out[S.SPLIT].to_pylist() == ["eval", "train"]  # 0x00000001 % 100 < 10; 0xffffffff % 100 = 95
    assert stage.stats.dropped == {"no_image": 1}
    assert stage.stats.counts["rows_without_negative"] == 1


def test_summary_markdown_has_a_section_per_entry():
    text = render_markdown({"dataset": "/d", "funnel": [{"reason": "kept", "rows": 3}], "timings_seconds": {"crawl": 1.5}})
    assert "## funnel" in text and "| kept | 3 |" in text and "| crawl | 1.5 |" in text
