"""summary.md shows Img-Diff pairs side by side with their boxes, and the pairs per outcome."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline import steps
from pipeline.core import schema as S
from pipeline.core.runners import LocalRunner
from pipeline.core.store import Dataset
from pipeline.imgdiff.emoji_pairs import write_emoji_pairs
from pipeline.imgdiff.report import FOLDER, SIDE, TOP_BOX
from pipeline.report import build_summary, write_summary


def test_summary_draws_pairs_with_boxes_and_counts_outcomes(tmp_path, emoji_dir):
    pairs, images = write_emoji_pairs(emoji_dir, tmp_path / "pairs.jsonl", limit=6)
    ds = Dataset(tmp_path / "ds")
    steps.imgdiff_import(ds, str(pairs), str(images))
    steps.imgdiff(ds, {"lower": 0.85}, LocalRunner(progress=False), progress=False)
    text = write_summary(ds, build_summary(ds))
    rows = ds.table(S.IMGDIFF).read().to_pylist()
    kept = [r for r in rows if r[S.FILTER_REASON] is None]
    dropped = len(rows) - len(kept)
    assert "## imgdiff pairs" in text and f"| kept | {len(kept)} |" in text
    assert (tmp_path / "ds" / "summary.md").read_text() == text
    for r in kept[:4] + [r for r in rows if r[S.FILTER_REASON]][:4]:
        path = tmp_path / "ds" / FOLDER / f"{r[S.PAIR_ID]}.png"
        assert f"({FOLDER}/{r[S.PAIR_ID]}.png)" in text and r[S.DIFFERENCE_CAPTION] in text
        sheet = np.asarray(Image.open(path))
        assert sheet.shape == (SIDE, 2 * SIDE + 6, 3)
        x0, y0, x1, y1 = r[S.BOXES][0]
        scale = SIDE / 64
        for offset in (0, SIDE + 6):  # the top box outlined on both images
            assert tuple(sheet[int(y0 * scale), offset + int((x0 + x1) / 2 * scale)]) == TOP_BOX
    assert dropped == sum(v for k, v in _outcomes(text).items() if k != "kept")


def _outcomes(text: str) -> dict[str, int]:
    section = text.split("## imgdiff pairs", 1)[1]
    return {line.split("|")[1].strip(): int(line.split("|")[2]) for line in section.splitlines()
            if line.startswith("| ") and line.split("|")[2].strip().isdigit()}
