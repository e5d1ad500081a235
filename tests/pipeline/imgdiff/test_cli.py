"""`foil imgdiff import`, `foil imgdiff` and `foil imgdiff export-pairs` end to end, in process,
on real emoji pairs; and generation with the tiny random-weight pipeline from neg_text rows."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from flows.cli import main
from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.store import Dataset
from pipeline.demo.sample import IMAGE_SUBDIR, emoji_items
from pipeline.imgdiff.emoji_pairs import write_emoji_pairs
from pipeline.imgdiff.filters import NO_DIFFERENCE_AREA, TOO_DIFFERENT, TOO_SIMILAR
from pipeline.imgdiff.pairs import read_pairs_file

LOCAL = "runner: {kind: local}\n"


def _pairs_file(tmp_path: Path, emoji_dir: Path) -> tuple[Path, Path, int]:
    """Eight real variant pairs, one identical pair and one unrelated pair."""
    pairs, images = write_emoji_pairs(emoji_dir, tmp_path / "pairs.jsonl", limit=8)
    items = emoji_items(emoji_dir, 200)
    with pairs.open("a") as f:
        f.write(json.dumps({"image_a": items[0].image, "image_b": items[0].image, "caption_a": items[0].caption, "caption_b": items[0].caption}) + "\n")
        f.write("\n")  # blank lines are allowed
        f.write(json.dumps({"image_a": items[3].image, "image_b": items[150].image, "caption_a": items[3].caption, "caption_b": items[150].caption, "kind": "unrelated"}) + "\n")
    return pairs, images, 10


def test_import_then_analyse_then_export_pairs(tmp_path, emoji_dir, capsys):
    pairs, images, n = _pairs_file(tmp_path, emoji_dir)
    ds = tmp_path / "ds"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(LOCAL + "imgdiff: {lower: 0.75, upper: 0.98}\n")
    assert main(["imgdiff", "import", "--dataset", str(ds), "--pairs", str(pairs), "--images", str(images)]) == 0
    assert main(["imgdiff", "--dataset", str(ds), "--recipe", str(recipe)]) == 0
    report = _last_json(capsys)
    rows = Dataset(ds).table(S.IMGDIFF).read().to_pylist()
    assert len(rows) == n and {r[S.METHOD] for r in rows} == {"import"}
    by_caption = {(r[S.CAPTION_A], r[S.CAPTION_B]): r for r in rows}
    identical = next(r for r in rows if r[S.CAPTION_A] == r[S.CAPTION_B])
    assert identical[S.FILTER_REASON] == TOO_SIMILAR and identical[S.BOXES] == []
    unrelated = rows[-1]
    assert unrelated[S.FILTER_REASON] == TOO_DIFFERENT and unrelated[S.SIMILARITY] <= 0.75
    kept = [r for r in rows if r[S.FILTER_REASON] is None]
    assert kept, by_caption.keys()
    for r in kept:
        assert 0.75 < r[S.SIMILARITY] < 0.98 and r[S.BOXES] and len(r[S.BOX_SCORES]) == len(r[S.BOXES])
        assert r[S.DIFFERENCE_CAPTION] and " in the first image, " in r[S.DIFFERENCE_CAPTION]
        assert r[S.CHECKS] == ["similarity_band", "difference_area"] and r[S.TRAINABLE]
        x0, y0, x1, y1 = r[S.BOXES][0]
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    # every dropped pair counted by its reason, in the step's stats and in SQL
    reasons = Counter(r[S.FILTER_REASON] for r in rows if r[S.FILTER_REASON])
    assert report["stats"]["dropped"] == dict(reasons)
    assert report["stats"]["counts"]["kept"] == len(kept)
    view = Catalog(Dataset(ds)).query("SELECT outcome, pairs FROM imgdiff_reasons").to_pylist()
    assert {v["outcome"]: v["pairs"] for v in view} == {**reasons, "kept": len(kept)}
    assert set(reasons) <= {TOO_SIMILAR, TOO_DIFFERENT, NO_DIFFERENCE_AREA}

    # the same command again keeps the result; another config needs --overwrite
    assert main(["imgdiff", "--dataset", str(ds), "--recipe", str(recipe)]) == 0
    assert _last_json(capsys)["shards_skipped"] == 1
    recipe.write_text(LOCAL + "imgdiff: {lower: 0.5}\n")
    assert main(["imgdiff", "--dataset", str(ds), "--recipe", str(recipe)]) == 2
    assert "--overwrite" in capsys.readouterr().err

    # held-out pairs back out in the pairs format (all of them at 100 percent)
    out = tmp_path / "held" / "pairs.jsonl"
    assert main(["imgdiff", "export-pairs", "--dataset", str(ds), "--out", str(out), "--images-out", str(tmp_path / "held" / "img"), "--eval-percent", "100"]) == 0
    back = read_pairs_file(out, tmp_path / "held" / "img")
    assert sorted((b["caption_a"], b["caption_b"]) for b in back) == sorted((r[S.CAPTION_A], r[S.CAPTION_B]) for r in kept)
    source = {(r[S.CAPTION_A], r[S.CAPTION_B]): r[S.IMAGE_B] for r in kept}
    for b in back:  # the very pixels of the pair
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(b["image_b_bytes"]))), np.asarray(Image.open(io.BytesIO(source[(b["caption_a"], b["caption_b"])]))))


def _last_json(capsys) -> dict:
    """The report the last command printed (each prints one indented JSON object)."""
    out = capsys.readouterr().out
    return json.loads(out[out.rfind("\n{\n") + 1 if "\n{\n" in out else out.index("{"):])


def test_bad_pairs_files_are_one_line_errors(tmp_path, emoji_dir, capsys):
    images = emoji_dir / IMAGE_SUBDIR
    item = emoji_items(emoji_dir, 1)[0]
    cases = {
        "missing": ({"image_a": item.image, "image_b": item.image, "caption_a": "x"}, "2: missing or empty field 'caption_b'"),
        "absent": ({"image_a": item.image, "image_b": "nope.png", "caption_a": "x", "caption_b": "y"}, "2: image_b: image"),
    }
    good = json.dumps({"image_a": item.image, "image_b": item.image, "caption_a": "x", "caption_b": "y"})
    for name, (bad, message) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(good + "\n" + json.dumps(bad) + "\n")
        assert main(["imgdiff", "import", "--dataset", str(tmp_path / "ds"), "--pairs", str(path), "--images", str(images)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and str(path) in err
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    assert main(["imgdiff", "import", "--dataset", str(tmp_path / "ds"), "--pairs", str(tmp_path / "broken.jsonl"), "--images", str(images)]) == 2
    assert "broken.jsonl:1: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "ds" / S.IMGDIFF_IMPORT).exists()  # nothing half-written
    assert main(["imgdiff", "--dataset", str(tmp_path / "empty")]) == 2
    assert "has no pairs" in capsys.readouterr().err


def test_generate_with_the_tiny_pipeline_is_flagged_untrainable(tmp_path, capsys):
    ds = Dataset(tmp_path / "ds")
    rows = {
        S.SAMPLE_ID: ["s1", "s2", "s3"],
        S.KIND: ["replace_object", "replace_object", "swap_object"],
        S.CAPTION: ["a cat on a red sofa", "a dog in the park", "a cat and a dog"],
        S.NEG_CAPTION: ["a fox on a red sofa", "a horse in the park", "a dog and a cat"],
        S.EDIT_SPAN: [[2, 5], [2, 5], None], S.EDIT_FROM: ["cat", "dog", None], S.EDIT_TO: ["fox", "horse", None],
        S.GENERATOR: ["foil.lexicon@2"] * 3, S.CHECKS: [[], [], []], S.SOURCE_ID: [None] * 3,
    }
    ds.table(S.NEG_TEXT).write_shard("part-00000", pa.Table.from_pydict(rows, schema=S.NEG_TEXT_SCHEMA))
    ds.table(S.NEG_TEXT).write_manifest("negatives", {}, [S.RAW], expected_shards=["part-00000"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(LOCAL + "imgdiff:\n  generate: {pipeline: 'tiny:txt2img', steps: 2, batch_pairs: 2}\n")
    assert main(["imgdiff", "--dataset", str(ds.root), "--recipe", str(recipe)]) == 0
    report = _last_json(capsys)
    assert report["generate"]["stats"]["counts"]["pairs_generated"] == 2
    generated = ds.table(S.IMGDIFF_GENERATED).read().to_pylist()
    assert [(g[S.OBJECT_A], g[S.OBJECT_B]) for g in generated] == [("cat", "fox"), ("dog", "horse")]
    assert all(g[S.METHOD] == "p2p" and g[S.PIPELINE] == "tiny:txt2img" and g[S.TRAINABLE] is False for g in generated)
    analysed = ds.table(S.IMGDIFF).read().to_pylist()
    assert len(analysed) == 2 and all(a[S.TRAINABLE] is False and a[S.SIMILARITY] is not None for a in analysed)
    for g in generated:  # both images of a pair come from one latent: same size, and not the same picture
        a, b = (np.asarray(Image.open(io.BytesIO(g[k]))) for k in (S.IMAGE_A, S.IMAGE_B))
        assert a.shape == b.shape and not np.array_equal(a, b)
