"""Projection heads trained on frozen real towers give a CLIP score that separates true pairs
from caption-shuffled pairs on emoji the heads never saw, and the checkpoint drives `embed`."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from pipeline.core import schema as S
from pipeline.embed.embed import EmbedStage
from pipeline.core.stage import ConfigError
from pipeline.models import factory as M
from training.evaluate import evaluate, roc_auc, shuffled_pairs
from training.heads import HeadsConfig, train_heads


def test_roc_auc_and_shuffled_pairs():
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert roc_auc(np.array([1.0]), np.array([1.0])) == 0.5
    captions = np.array(["a", "b", "c", "a"], dtype=object)
    images, texts = shuffled_pairs(captions)
    assert all(captions[i] != captions[j] for i, j in zip(images, texts)) and len(images) >= 2


def _rows(emoji_dir, items) -> pa.Table:
    return pa.table({
        S.SAMPLE_ID: [it.image for it in items], S.CAPTION: [it.caption for it in items],
        S.NEG_CAPTION: [None] * len(items), S.NEG_KIND: [None] * len(items),
        S.IMAGE: [(emoji_dir / "img/google/64" / it.image).read_bytes() for it in items],
    })


def test_heads_on_frozen_towers_score_held_out_pairs(tmp_path, emoji_dir):
    from pipeline.demo.sample import emoji_items

    items = emoji_items(emoji_dir)
    held = [it for it in items if int(hashlib.md5(it.image.encode()).hexdigest(), 16) % 5 == 0][:100]
    train = [it for it in items if int(hashlib.md5(it.image.encode()).hexdigest(), 16) % 5 != 0][:300]
    ckpt = tmp_path / "heads.pt"
    report = train_heads(_rows(emoji_dir, train), HeadsConfig(steps=200), ckpt, progress=lambda _: None)
    assert report["last_loss"] < report["first_loss"] / 5

    untrained = evaluate(M.create_model(M.REAL_TWO_TOWER), M.REAL_TWO_TOWER, _rows(emoji_dir, held))
    trained = evaluate(M.create_model(M.REAL_TWO_TOWER, pretrained=str(ckpt)), M.REAL_TWO_TOWER, _rows(emoji_dir, held))
    assert trained["clip_score_auc"] > 0.7 and trained["clip_score_auc"] > untrained["clip_score_auc"] + 0.1
    assert trained["image_to_text_R@1"] > 0.1  # chance: 0.01

    # The checkpoint is an ordinary open_clip file: the embed stage scores with it.
    stage = EmbedStage(model=M.REAL_TWO_TOWER, pretrained=str(ckpt), batch_size=50)
    batch = pa.RecordBatch.from_pydict({S.SAMPLE_ID: [it.image for it in held[:50]], S.CAPTION: [it.caption for it in held[:50]],
                                        S.STATUS: ["success"] * 50, S.IMAGE: _rows(emoji_dir, held[:50])[S.IMAGE].to_pylist()})
    out = pa.Table.from_batches(list(stage.run(iter([batch]))))
    image = np.stack(out[S.IMAGE_EMBEDDING].to_numpy(zero_copy_only=False)).astype(np.float32)
    text = np.stack(out[S.TEXT_EMBEDDING].to_numpy(zero_copy_only=False)).astype(np.float32)
    true_scores = out[S.CLIP_SCORE].to_numpy()
    assert np.allclose(true_scores, np.sum(image * text, axis=1), atol=1e-2)
    assert true_scores.mean() > np.sum(image * np.roll(text, 1, axis=0), axis=1).mean() + 0.1


def test_models_without_head_modules_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="needs an image tower with a `head` module"):
        train_heads(pa.table({S.CAPTION: ["a", "b"], S.IMAGE: [b"", b""]}), HeadsConfig(model="foil-tiny-vit", steps=1), tmp_path / "x.pt")
