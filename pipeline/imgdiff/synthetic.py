"""A procedural renderer of Img-Diff-like pairs whose true difference is known.

Flat shapes on a flat background; the second image is the first with one shape recoloured or
replaced by another shape, and each image gets its own light Gaussian noise, as two diffusion
samples from one latent would differ a little everywhere. The true changed box is the bounding
box of the pixels that differ between the two noise-free renders, so it is exact by
construction. The Difference Area Generator's tests and the benchmark both score against it;
no neural weights are needed to check the geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Well-separated colours (a recolour always changes the pixels a lot) and a few shape kinds.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (220, 40, 40), (40, 160, 60), (40, 80, 220), (240, 200, 30), (150, 60, 190), (250, 130, 20), (20, 190, 200),
)
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((245, 245, 240), (30, 30, 40), (200, 215, 230))
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
CHANGES: tuple[str, ...] = ("recolour", "replace")


@dataclass(frozen=True)
class SyntheticPair:
    image_a: np.ndarray  # [H, W, 3] uint8
    image_b: np.ndarray
    box: tuple[int, int, int, int] | None  # [x0, y0, x1, y1) of the pixels that differ; None: identical
    change: str  # recolour | replace | identical
    object_a: str  # "red circle"
    object_b: str


_COLOUR_NAMES = ("red", "green", "blue", "yellow", "purple", "orange", "cyan")


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=colour)
    elif shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1 - 1, cy), (cx, y1 - 1), (x0, cy)], fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_pair(rng: np.random.Generator, size: int = 128, objects: int = 4, change: str | None = None, noise: float = 3.0) -> SyntheticPair:
    """One pair: `objects` shapes in the cells of a grid (so they never overlap), one of them
    changed (`change`: recolour, replace or identical; None picks recolour or replace)."""
    change = change or CHANGES[int(rng.integers(len(CHANGES)))]
    grid = int(np.ceil(np.sqrt(objects)))
    cell = size // grid
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    cells = rng.permutation(grid * grid)[:objects]
    placed = []
    for c in cells:
        side = int(rng.integers(cell * 5 // 10, cell * 9 // 10))
        gx, gy = (int(c) % grid) * cell, (int(c) // grid) * cell
        x0 = gx + int(rng.integers(0, cell - side + 1))
        y0 = gy + int(rng.integers(0, cell - side + 1))
        placed.append((SHAPES[int(rng.integers(len(SHAPES)))], (x0, y0, x0 + side, y0 + side), int(rng.integers(len(PALETTE)))))
    changed = int(rng.integers(objects))
    shape_b, box_b, colour_b = placed[changed]
    if change == "recolour":
        colour_b = int((colour_b + 1 + rng.integers(len(PALETTE) - 1)) % len(PALETTE))
    elif change == "replace":  # another shape, and usually another colour, as a replaced object would be
        shape_b = SHAPES[int((SHAPES.index(shape_b) + 1 + rng.integers(len(SHAPES) - 1)) % len(SHAPES))]
        colour_b = int(rng.integers(len(PALETTE)))
    elif change != "identical":
        raise ValueError(f"unknown change {change!r}; known: {', '.join(CHANGES)}, identical")
    scenes = []
    for version in (0, 1):
        img = Image.new("RGB", (size, size), background)
        draw = ImageDraw.Draw(img)
        for i, (shape, box, colour) in enumerate(placed):
            if version == 1 and i == changed:
                shape, box, colour = shape_b, box_b, colour_b
            _draw(draw, shape, box, PALETTE[colour])
        scenes.append(np.asarray(img, dtype=np.int16))
    differs = np.any(scenes[0] != scenes[1], axis=2)
    truth = None
    if differs.any():
        ys, xs = np.nonzero(differs)
        truth = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    noisy = [np.clip(s + rng.normal(0, noise, s.shape), 0, 255).astype(np.uint8) for s in scenes]
    shape_a, _, colour_a = placed[changed]
    return SyntheticPair(
        noisy[0], noisy[1], truth, change if truth else "identical",
        f"{_COLOUR_NAMES[colour_a]} {shape_a}", f"{_COLOUR_NAMES[colour_b]} {shape_b}",
    )

