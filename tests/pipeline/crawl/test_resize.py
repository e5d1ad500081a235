"""foil's crawl resizer against img2dataset's `Resizer`, the oracle: for every mode, format and
kind of image, the same bytes, sizes and errors."""

from __future__ import annotations

import io
import itertools

import cv2
import numpy as np
import pytest

from pipeline.crawl.resize import DECODE_ERROR, Resizer, img2dataset_resizer_class
from pipeline.demo.sample import IMAGE_SUBDIR, emoji_items, emoji_sample_dir

FORMATS = {"png": 6, "jpg": 95, "webp": 90}


def _reference(size: int, mode: str, fmt: str):
    return img2dataset_resizer_class()(image_size=size, resize_mode=mode, resize_only_if_bigger=False,
                                       encode_quality=FORMATS[fmt], encode_format=fmt)


def _images() -> list[tuple[str, bytes]]:
    """Grey, colour and alpha images smaller, larger and equal to the target, square and not,
    with smooth content (where interpolation shows) and noise; PNG and JPEG sources."""
    rng = np.random.default_rng(7)
    out = []
    shapes = [(64, 64), (30, 30), (200, 120), (50, 170), (63, 65), (1, 90), (300, 301), (7, 5)]
    for (h, w), channels in itertools.product(shapes, (None, 3, 4)):
        y, x = np.mgrid[0:h, 0:w]
        smooth = ((x * 255 / max(w - 1, 1) + y * 3) % 256).astype(np.uint8)
        planes = [smooth, np.roll(smooth, 5, axis=1), rng.integers(0, 256, (h, w), dtype=np.uint8), (smooth // 2 + 64)]
        img = smooth if channels is None else np.stack(planes[:channels], axis=-1)
        out.append((f"{h}x{w}x{channels or 1}.png", cv2.imencode(".png", img)[1].tobytes()))
        if channels != 4:
            out.append((f"{h}x{w}x{channels or 1}.jpg", cv2.imencode(".jpg", img)[1].tobytes()))
    return out


@pytest.mark.parametrize("mode", ["border", "center_crop", "keep_ratio", "no"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_same_bytes_as_img2dataset(mode, fmt):
    ours, theirs = Resizer(48, mode, fmt, FORMATS[fmt]), _reference(48, mode, fmt)
    images = _images()
    for name, body in images:
        assert ours(body) == theirs(io.BytesIO(body), None), f"{mode}/{fmt}: {name}"


def test_same_bytes_on_the_emoji_sample():
    root = emoji_sample_dir()
    bodies = [(root / IMAGE_SUBDIR / it.image).read_bytes() for it in emoji_items(root, limit=300)]
    ours, theirs = Resizer(32, "border", "png", 6), _reference(32, "border", "png")
    assert all(ours(b) == theirs(io.BytesIO(b), None) for b in bodies)
    assert ours(bodies[0])[1:5] == (32, 32, 64, 64)  # resized to 32 from the sample's 64 px


def test_errors_and_odd_images_match():
    ours, theirs = Resizer(32, "border", "png", 6), _reference(32, "border", "png")
    garbage = b"not an image at all"
    assert ours(garbage) == (None, None, None, None, None, DECODE_ERROR) == theirs(io.BytesIO(garbage), None)
    # 16-bit and grey+alpha images are handed to img2dataset's class: still the same result
    deep = cv2.imencode(".png", (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 29))[1].tobytes()
    assert ours(deep) == theirs(io.BytesIO(deep), None)
    assert ours(deep)[1:3] == (32, 32)
