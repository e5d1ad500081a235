"""Export stage: training shards (image, caption, one hard negative caption, split) as parquet.

Reads the `export_rows` view (curated rows joined with their image and one text negative) shard
by shard and writes table `train`, which training reads as plain parquet. A stable hash of the
sample id puts `eval_percent` percent of rows in the `eval` split, the same on every rerun.
"""

from __future__ import annotations

from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as S
from pipeline.stage import ConfigError, Stage, register


def split_of(sample_id: str, eval_percent: int) -> str:
    return "eval" if int(sample_id[:8], 16) % 100 < eval_percent else "train"


@register
class ExportStage(Stage):
    name = "export"
    output_schema = S.TRAIN_SCHEMA
    input_columns = [S.SAMPLE_ID, S.CAPTION, S.NEG_CAPTION, S.NEG_KIND, S.IMAGE]

    def __init__(self, eval_percent: int = 10):
        super().__init__()
        if not isinstance(eval_percent, int) or not 0 <= eval_percent < 100:
            raise ConfigError(f"export.eval_percent: must be an integer in [0, 100), got {eval_percent!r}")
        self.eval_percent = eval_percent

    def config(self) -> dict[str, Any]:
        return {"eval_percent": self.eval_percent}

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches([batch])
        has_image = pc.is_valid(table[S.IMAGE])
        missing = table.num_rows - pc.sum(has_image).as_py() if table.num_rows else 0
        if missing:
            self.drop("no_image", missing)
            table = table.filter(has_image)
        without_negative = pc.sum(pc.is_null(table[S.NEG_CAPTION])).as_py() or 0
        self.count("rows_without_negative", without_negative)
        splits = pa.array([split_of(s, self.eval_percent) for s in table[S.SAMPLE_ID].to_pylist()], pa.string())
        table = table.append_column(S.SPLIT, splits).select(S.TRAIN_SCHEMA.names).cast(S.TRAIN_SCHEMA)
        for split in ("train", "eval"):
            self.count(f"split:{split}", splits.to_pylist().count(split))
        yield from table.to_batches()
