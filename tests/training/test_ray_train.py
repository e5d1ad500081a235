"""The Ray training path's input: a small split decoded by the driver as the decoder actors
would. A real 2-worker Ray Train job, its checkpoints, run record and eval are in
test_train_resume.py (killed and resumed) and test_multinode.py (one worker per node, on S3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import schema as S
from pipeline.core.store import Dataset


def _train_table(emoji_dir: Path, items) -> pa.Table:
    rows = {name: [] for name in S.TRAIN_SCHEMA.names}
    for i, it in enumerate(items):
        rows[S.SAMPLE_ID].append(f"{i:016x}")
        rows[S.CAPTION].append(it.caption)
        rows[S.NEG_CAPTION].append(items[(i + 1) % len(items)].caption if i % 2 else None)
        rows[S.NEG_KIND].append("replace_object" if i % 2 else None)
        rows[S.SPLIT].append("eval" if i % 5 == 0 else "train")
        rows[S.IMAGE].append((emoji_dir / "img/google/64" / it.image).read_bytes())
        # every third row has a negative image (the next emoji): the Ray path encodes and masks them
        rows[S.NEG_IMAGE_COL].append((emoji_dir / "img/google/64" / items[(i + 1) % len(items)].image).read_bytes() if i % 3 == 0 else None)
    return pa.table(rows, schema=S.TRAIN_SCHEMA)


def test_a_small_split_is_decoded_by_the_driver_exactly_as_the_decoder_actors_would(tmp_path, emoji_dir, few_emoji):
    from training.data import BatchDecoder
    from training.ray_train import decode_in_process, decoded_bytes, shard_rows

    ds = Dataset(tmp_path / "ds")
    table = _train_table(emoji_dir, few_emoji[:20])
    ds.table(S.TRAIN).write_shard("part-00000", table)
    files = ds.table(S.TRAIN).shard_uris()
    columns = [S.CAPTION, S.NEG_CAPTION, S.IMAGE, S.SPLIT, S.NEG_IMAGE_COL]
    blocks = decode_in_process(files, columns, "foil-tiny-vit", block_rows=3)
    train = table.filter(pc.equal(table[S.SPLIT], "train"))
    assert [b.num_rows for b in blocks] == [3, 3, 3, 3, 3, 1] and sum(b.num_rows for b in blocks) == train.num_rows == 16
    expected = BatchDecoder("foil-tiny-vit")(train.select(columns).to_pydict())
    for name, want in expected.items():
        got = np.concatenate([b.column(name).combine_chunks().to_numpy(zero_copy_only=False) for b in blocks])
        assert got.shape == want.shape and np.array_equal(got, want), name
    assert shard_rows(files) == 20 and decoded_bytes(20, "foil-tiny-vit") == 20 * (2 * 64 * 64 * 3 + 2 * 8 * 32 + 2)
