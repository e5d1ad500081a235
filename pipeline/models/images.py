"""Image decoding that data stages and training share: composite on white, resize to a model's input.

Emoji and logos are mostly alpha; every consumer (scores, embeddings, training batches) sees them
on the same white background, so a score computed on a stage matches what the model trains on.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def on_white(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white (emoji and logos are mostly alpha)."""
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    canvas.alpha_composite(image.convert("RGBA"))
    return canvas.convert("RGB")


def decode_image(blob: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(blob)) as img:
        rgb = on_white(img)
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(rgb, dtype=np.uint8)  # [H, W, 3]
