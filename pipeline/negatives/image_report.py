"""The image-negatives part of summary.md: a grid of positive | negative image with both captions.

A few rows per method and kind (the `neg_image_samples` view's stable pick) are drawn as small
PNG files in `summary_images/neg_image/` next to summary.md, and listed in a markdown table that
links them, so a person can see at a glance whether the negative image shows the negative caption.
"""

from __future__ import annotations

from typing import Any

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.store import Dataset

FOLDER = "summary_images/neg_image"
THUMB = 64  # px: the emoji's own size, small enough for a page of them


def _thumb(blob: bytes) -> bytes | None:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as img:
            small = img.convert("RGB")
            small.thumbnail((THUMB, THUMB))
    except Exception:  # an unreadable image is left out of the grid, not a broken report
        return None
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    return buf.getvalue()


def _escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_section(dataset: Dataset, per_method_kind: int = 4) -> str:
    """The grid, or "" when the dataset has no committed `neg_image` table."""
    table = dataset.table(S.NEG_IMAGE)
    if not table.exists() or not table.finished_shards():
        return ""
    catalog = Catalog(dataset)
    picked = catalog.query(
        "SELECT s.sample_id, s.kind, s.caption, s.negative_caption, s.method, s.trainable, n.image AS negative, r.image AS positive "
        "FROM neg_image_samples s JOIN neg_image n USING (sample_id, kind, method) JOIN raw r ON r.sample_id = s.sample_id "
        f"QUALIFY row_number() OVER (PARTITION BY s.method, s.kind ORDER BY s.sample_id) <= {int(per_method_kind)} "
        "ORDER BY s.method, s.kind, s.sample_id"
    ).to_pylist()
    dataset.fs.makedirs(dataset.path(FOLDER), exist_ok=True)
    lines = ["\n## image negatives\n\n", "| positive image | negative image | caption | negative caption | method |\n", "|---|---|---|---|---|\n"]
    for row in picked:
        cells = []
        for side in ("positive", "negative"):
            png = _thumb(row[side]) if row[side] else None
            if png is None:
                cells.append("(unreadable)")
                continue
            name = f"{FOLDER}/{row['sample_id']}-{row['kind']}-{row['method']}-{side}.png"
            with dataset.fs.open(dataset.path(name), "wb") as f:
                f.write(png)
            cells.append(f"![{side}]({name})")
        method = row["method"] + ("" if row["trainable"] else " (random weights: never trained on)")
        lines.append(f"| {cells[0]} | {cells[1]} | {_escape(row['caption'])} | {_escape(row['negative_caption'])} | {method} |\n")
    return "".join(lines)
