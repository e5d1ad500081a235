"""`families` batching (training/batching.py): the rows of a minimal pair share a batch, in the
in-process loop's epochs and on a Ray worker, with each caption once per batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.core import schema as S
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset
from training.batching import MAX_FAMILY, epoch_batches, families
from training.config import TrainConfig


def _tokens(ids: list[int]) -> np.ndarray:
    """One token row per caption id: [N, 4], equal rows for equal ids."""
    return np.array([[49406, 100 + i, 49407, 0] for i in ids], dtype=np.int64)


def _arrays(captions: list[int], negatives: list[int | None]) -> dict[str, np.ndarray]:
    return {
        "text": _tokens(captions),
        "negative_text": _tokens([-1 if n is None else n for n in negatives]),
        "has_negative": np.array([n is not None for n in negatives]),
    }


def test_rows_are_linked_through_their_negative_captions_and_families_are_capped():
    # 0 -> 1 -> 2 chains; 3 is alone; 4's negative (caption 9) is no row's caption; 5's flag is off
    a = _arrays([0, 1, 2, 3, 4, 5], [1, 2, None, None, 9, 0])
    a["has_negative"][5] = False
    groups = sorted(sorted(g.tolist()) for g in families(a))
    assert groups == [[0, 1, 2], [3], [4], [5]]
    chain = _arrays(list(range(40)), [i + 1 for i in range(39)] + [None])
    sizes = [len(g) for g in families(chain)]
    assert sum(sizes) == 40 and max(sizes) == MAX_FAMILY


def _split_rows(batches: list[np.ndarray]) -> int:
    """Rows of the pairs (2k, 2k+1), k < 48, whose partner is in another batch."""
    return sum(1 for b in batches for i in b.tolist() if i < 96 and (i ^ 1) not in set(b.tolist()))


def test_an_epoch_keeps_pairs_together_and_each_caption_once_per_batch():
    # 48 pairs (2k, 2k+1) pointing at each other, 16 rows of their own, 4 more rows of caption 0
    a = _arrays(list(range(112)) + [0] * 4, [i ^ 1 for i in range(96)] + [None] * 20)
    for seed in range(5):
        batches = list(epoch_batches(a, 16, np.random.default_rng(seed), "families"))
        rows = np.concatenate(batches)
        assert len(batches) == 7 and len(rows) == len(set(rows.tolist()))  # 116 rows: 7 full batches, no row twice
        assert all(len({a["text"][i].tobytes() for i in b}) == 16 for b in batches)  # a caption once per batch
        assert _split_rows(batches) <= 2  # a pair splits only when the last room has nothing else to take
        assert _split_rows(list(epoch_batches(a, 16, np.random.default_rng(seed), "random"))) > 60
    again = list(epoch_batches(a, 16, np.random.default_rng(0), "families"))
    assert all(np.array_equal(x, y) for x, y in zip(list(epoch_batches(a, 16, np.random.default_rng(0), "families")), again))


def test_families_never_stall_when_nothing_fits_the_room_left():
    # pairs, and single rows that all repeat one caption: a batch with one free slot can only
    # be filled by splitting a pair, which it does rather than holding the whole epoch back
    a = _arrays(list(range(96)) + [0] * 16, [i ^ 1 for i in range(96)] + [None] * 16)
    batches = list(epoch_batches(a, 16, np.random.default_rng(0), "families"))
    assert len(batches) == 6 and all(len({a["text"][i].tobytes() for i in b}) == 16 for b in batches)


def _paired_train_table(emoji_dir: Path, items) -> pa.Table:
    """Rows in pairs (2k, 2k+1), each row's negative caption the other row's caption."""
    rows: dict[str, list] = {name: [] for name in S.TRAIN_SCHEMA.names}
    for i, it in enumerate(items):
        rows[S.SAMPLE_ID].append(f"{i:016x}")
        rows[S.CAPTION].append(it.caption)
        rows[S.NEG_CAPTION].append(items[i ^ 1].caption)
        rows[S.NEG_KIND].append("replace_object")
        rows[S.SPLIT].append("train")
        rows[S.IMAGE].append((emoji_dir / "img/google/64" / it.image).read_bytes())
        rows[S.NEG_IMAGE_COL].append(None)
    return pa.table(rows, schema=S.TRAIN_SCHEMA)


def _pairs_split(batches, n_batches: int) -> int:
    """How many batches hold a row without its partner (rows decoded to token rows)."""
    split = 0
    for _, batch in zip(range(n_batches), batches):
        captions = {np.asarray(t).tobytes() for t in batch["text"]}
        if any(np.asarray(n).tobytes() not in captions for n in batch["negative_text"]):
            split += 1
    return split


@pytest.fixture
def paired_dataset(tmp_path, emoji_dir, few_emoji) -> Dataset:
    ds = Dataset(tmp_path / "ds")
    ds.table(S.TRAIN).write_shard("part-00000", _paired_train_table(emoji_dir, few_emoji[:32]))
    ds.table(S.TRAIN).write_manifest("export", {}, [S.RAW])
    return ds


def test_the_in_process_loop_batches_whole_pairs_with_families(paired_dataset):
    from training.local_train import _epochs

    files = paired_dataset.table(S.TRAIN).shard_uris()
    columns = [S.CAPTION, S.NEG_CAPTION, S.IMAGE, S.SPLIT]
    for in_memory in (True, False):
        assert _pairs_split(_epochs(files, columns, "foil-tiny-vit", 8, 0, in_memory, "families"), 12) == 0
    assert _pairs_split(_epochs(files, columns, "foil-tiny-vit", 8, 0, True, "random"), 12) > 0


def test_a_ray_worker_batches_whole_pairs_within_its_window(paired_dataset, ray_local):
    from training.data import BatchDecoder
    from training.ray_train import _endless_batches, train_split

    table = train_split(paired_dataset.table(S.TRAIN).shard_uris()[0], [S.CAPTION, S.NEG_CAPTION, S.IMAGE, S.SPLIT])
    decoded = BatchDecoder("foil-tiny-vit")(table.to_pydict())
    data = ray_local.data.from_items([{k: v[i] for k, v in decoded.items()} for i in range(table.num_rows)])
    # a window of FAMILY_WINDOW batches of 2 holds all 32 rows: every batch is one whole pair
    assert _pairs_split(_endless_batches(data, 2, 0, "families"), 32) == 0
    assert _pairs_split(_endless_batches(data, 2, 0, "random"), 32) > 0


def test_batching_is_checked_when_the_recipe_is_read():
    assert TrainConfig.from_dict({"batching": "families"}).batching == "families"
    with pytest.raises(ConfigError, match=r"train\.batching: 'pairs' is not one of random, families"):
        TrainConfig.from_dict({"batching": "pairs"})
