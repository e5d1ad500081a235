"""A real Ray Train job: 2 CPU workers, the tiny model, a few steps, results in the catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.store import Dataset
from pipeline.models import factory as M
from training import jobs
from training.evaluate import evaluate
from training.ray_train import TrainConfig


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


def test_two_worker_training_records_run_curve_and_eval(tmp_path, emoji_dir, few_emoji, ray_local):
    ds = Dataset(tmp_path / "ds")
    train = ds.table(S.TRAIN)
    train.write_shard("part-00000", _train_table(emoji_dir, few_emoji[:20]))
    train.write_shard("part-00001", _train_table(emoji_dir, few_emoji[20:40]))
    train.write_manifest("export", {}, [S.RAW])

    # log_every does not divide checkpoint_every: checkpoints still come every 2 steps
    cfg = TrainConfig.from_dict({"steps": 4, "batch_size": 4, "checkpoint_every": 2, "log_every": 3, "warmup_steps": 1})
    # a URI, as for object storage: checkpoints and the curve go through Ray's and fsspec's filesystems
    from training.ray_train import negative_image_rows

    assert negative_image_rows(train.shard_uris()) == 14  # rows 0, 3, ..., 18 of each shard: encoded, the rest masked
    run_id, result = jobs.train(ds, cfg, f"file://{tmp_path / 'ckpt'}", workers=2)
    assert result.steps == 4
    assert Path(result.model_weights).is_file() and "checkpoint_step_0000004" in result.model_weights
    assert sorted(p.name for p in (tmp_path / "ckpt" / run_id).glob("checkpoint_step_*")) == ["checkpoint_step_0000002", "checkpoint_step_0000004"]
    assert [int(r["step"]) for r in result.history] == [3, 4]

    # open_clip loads the trained weights, which are not the initial ones (rank 0 seeds with 0)
    model, _, _ = open_clip.create_model_and_transforms("foil-tiny-vit", pretrained=result.model_weights)
    torch.manual_seed(0)
    untrained = M.create_model("foil-tiny-vit")
    saved = torch.load(result.model_weights, weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert not torch.equal(untrained.state_dict()["visual.proj"], saved["visual.proj"])

    # jobs.evaluate scores that checkpoint on the eval split and records what it returns
    metrics = jobs.evaluate(ds, result.model_weights, "foil-tiny-vit", run_id)
    rows = train.read()
    expected = evaluate(model, "foil-tiny-vit", rows.filter(pc.equal(rows[S.SPLIT], "eval")))
    assert metrics["eval_rows"] == 8 and metrics == pytest.approx(expected)

    cat = Catalog(ds)
    assert cat.query("select count(*) n from runs").column("n")[0].as_py() == 1
    steps = cat.query(f"select distinct step from train_metrics where run_id = '{run_id}' order by step").column("step").to_pylist()
    assert steps == [3, 4]
    recorded = cat.query(f"select name, value from eval_metrics where run_id = '{run_id}'").to_pylist()
    assert {r["name"]: r["value"] for r in recorded} == pytest.approx(metrics)
    assert {"image_to_text_R@1", "text_to_image_R@1", "hard_negative_accuracy"} <= set(metrics)


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
