from __future__ import annotations

import hashlib

import pyarrow as pa
from PIL import Image, ImageFilter

from pipeline.core import schema as S
from pipeline.curate.score import ScoreStage, hamming, perceptual_hash
from tests.conftest import png_bytes


def _emoji(emoji_dir, name):
    return Image.open(emoji_dir / "img/google/64" / name).convert("RGB")


def test_phash_is_close_for_near_duplicates_and_far_for_different_images(emoji_dir):
    apple = _emoji(emoji_dir, "1f34e.png")
    blurred = apple.filter(ImageFilter.GaussianBlur(1))
    resized = apple.resize((48, 48))
    other = _emoji(emoji_dir, "1f697.png")  # a car
    h = perceptual_hash(apple)
    assert len(h) == 16
    assert hamming(h, perceptual_hash(blurred)) <= 6
    assert hamming(h, perceptual_hash(resized)) <= 6
    assert hamming(h, perceptual_hash(other)) >= 16


def test_scores_every_crawled_row_and_records_decode_errors():
    good = png_bytes((10, 200, 30), (40, 20))
    rows = {
        S.SAMPLE_ID: ["a", "b", "c"],
        S.CAPTION: ["a green box here", "broken", "never fetched"],
        S.STATUS: ["success", "success", "failed_to_download"],
        S.IMAGE: [good, b"\x89PNG garbage", None],
    }
    stage = ScoreStage()
    out = pa.Table.from_batches(list(stage.run(iter([pa.RecordBatch.from_pydict(rows)]))))
    assert out.schema == S.SCORES_SCHEMA
    assert out[S.SAMPLE_ID].to_pylist() == ["a", "b"]
    a = out.to_pylist()[0]
    assert (a[S.WIDTH], a[S.HEIGHT], a[S.CAPTION_WORDS], a[S.CAPTION_CHARS]) == (40, 20, 4, 16)
    assert abs(a[S.ASPECT_RATIO] - 2.0) < 1e-6
    assert a[S.SHA256] == hashlib.sha256(good).hexdigest()
    assert a[S.DECODE_ERROR] is None and a[S.PHASH]
    b = out.to_pylist()[1]
    assert b[S.DECODE_ERROR] and b[S.WIDTH] is None
    assert stage.stats.dropped == {"not_crawled": 1}
    assert stage.stats.counts == {"decode_error": 1}
