"""Img-Diff pairs for a person to look at: both images side by side with their boxes drawn.

`pair_sheet` draws one pair (image A | image B, each box outlined on both, the most different in
red, the others in orange); `markdown_section` writes a few kept and a few dropped pairs as small
PNGs next to summary.md and returns the Markdown that shows them with their difference caption
and filter reason, and the pairs per outcome.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageDraw

from pipeline.core import schema as S
from pipeline.core.store import Dataset
from pipeline.models.images import on_white

FOLDER = "report/imgdiff"  # inside the dataset folder, next to summary.md
SIDE = 128  # each image drawn at this size, so 64 px emoji and 1024 px SDXL pairs look alike
TOP_BOX = (230, 30, 30)
OTHER_BOX = (250, 150, 20)


def pair_sheet(image_a: bytes, image_b: bytes, boxes: list[list[int]] | None, gap: int = 6) -> Image.Image:
    sheet = Image.new("RGB", (2 * SIDE + gap, SIDE), (255, 255, 255))
    for i, blob in enumerate((image_a, image_b)):
        with Image.open(io.BytesIO(blob)) as img:
            rgb = on_white(img)
        scale_x, scale_y = SIDE / rgb.width, SIDE / rgb.height
        tile = rgb.resize((SIDE, SIDE), Image.Resampling.NEAREST if rgb.width < SIDE else Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(tile)
        for k, (x0, y0, x1, y1) in enumerate(boxes or []):
            draw.rectangle((x0 * scale_x, y0 * scale_y, x1 * scale_x - 1, y1 * scale_y - 1), outline=TOP_BOX if k == 0 else OTHER_BOX, width=2)
        sheet.paste(tile, (i * (SIDE + gap), 0))
    return sheet


def markdown_section(dataset: Dataset, kept: int = 4, dropped: int = 4) -> str:
    """The pairs part of summary.md; empty when the dataset has no `imgdiff` table."""
    table = dataset.table(S.IMGDIFF)
    if not table.exists() or not table.finished_shards():
        return ""
    rows = table.read(columns=[S.PAIR_ID, S.METHOD, S.CAPTION_A, S.CAPTION_B, S.SIMILARITY, S.BOXES, S.DIFFERENCE_CAPTION,
                               S.FILTER_REASON, S.TRAINABLE, S.IMAGE_A, S.IMAGE_B]).to_pylist()
    rows.sort(key=lambda r: r[S.PAIR_ID])  # a stable pick
    shown = [r for r in rows if r[S.FILTER_REASON] is None][:kept] + [r for r in rows if r[S.FILTER_REASON]][:dropped]
    outcomes: dict[str, int] = {}
    for r in rows:
        outcomes[r[S.FILTER_REASON] or "kept"] = outcomes.get(r[S.FILTER_REASON] or "kept", 0) + 1
    dataset.fs.makedirs(dataset.path(FOLDER), exist_ok=True)
    lines = ["\n## imgdiff pairs\n", "\n| outcome | pairs |\n|---|---|\n"]
    lines += [f"| {k} | {v} |\n" for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1])]
    lines.append("\n")
    for r in shown:
        name = f"{FOLDER}/{r[S.PAIR_ID]}.png"
        buf = io.BytesIO()
        try:
            pair_sheet(r[S.IMAGE_A], r[S.IMAGE_B], r[S.BOXES]).save(buf, format="PNG")
        except Exception:  # an unreadable image is a recorded filter reason, not a broken report
            continue
        with dataset.fs.open(dataset.path(name), "wb") as f:
            f.write(buf.getvalue())
        outcome = r[S.FILTER_REASON] or "kept"
        similarity = "n/a" if r[S.SIMILARITY] is None else f"{r[S.SIMILARITY]:.3f}"
        flag = "" if r[S.TRAINABLE] else " (random-weight pipeline: never trained on)"
        lines.append(f"![{r[S.CAPTION_A]} / {r[S.CAPTION_B]}]({name})\n\n")
        lines.append(f"{_escape(r[S.CAPTION_A])} | {_escape(r[S.CAPTION_B])} ({r[S.METHOD]}, similarity {similarity}, {outcome}){flag}: "
                     f"{_escape(r[S.DIFFERENCE_CAPTION] or 'no difference caption')}\n\n")
    return "".join(lines)


def _escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
