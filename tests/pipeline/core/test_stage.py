from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.core.stage import ConfigError, Stage, StageStats
from pipeline.stages import build_stage, stage_names


def test_registry_knows_the_builtin_stages():
    assert {"crawl", "score", "negatives", "export"} <= set(stage_names())


def test_unknown_stage_fails_loudly_with_the_known_names():
    with pytest.raises(ConfigError, match=r"unknown stage 'scroe'; known stages: .*score"):
        build_stage("scroe")


def test_unknown_parameter_is_named():
    with pytest.raises(ConfigError, match=r"negatives\.sed: unknown field; known: kinds, seed"):
        build_stage("negatives", {"sed": 1})


def test_bad_parameter_value_is_named():
    with pytest.raises(ConfigError, match=r"crawl\.resize_mode: 'squash'"):
        build_stage("crawl", {"resize_mode": "squash"})


class _KeepEven(Stage):
    name = "keep_even_test"
    output_schema = pa.schema([("x", pa.int64())])

    def process(self, batch):
        xs = batch.column("x").to_pylist()
        kept = [x for x in xs if x % 2 == 0]
        self.drop("odd", len(xs) - len(kept))
        yield pa.RecordBatch.from_pydict({"x": kept}, schema=self.output_schema)


def test_stage_run_counts_in_out_and_drop_reasons():
    stage = _KeepEven()
    batches = [pa.RecordBatch.from_pydict({"x": list(range(10))}), pa.RecordBatch.from_pydict({"x": [1, 3]})]
    out = list(stage.run(iter(batches)))
    assert sum(b.num_rows for b in out) == 5
    stats = stage.stats.as_dict()
    assert (stats["rows_in"], stats["rows_out"], stats["dropped"]) == (12, 5, {"odd": 7})
    merged = StageStats()
    merged.merge(stats)
    merged.merge(stats)
    assert merged.dropped["odd"] == 14
