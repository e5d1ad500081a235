"""The held-out Twemoji pairs: kinds read from the names, invisible differences dropped and
counted, and a folder that `foil eval --pairs` reads. Built on a small package in the layout of
emoji-datasource-twitter (emoji.json + img/twitter/64), so no network is needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main
from pipeline.core.stage import ConfigError
from pipeline.demo.heldout import TWEMOJI_SUBDIR, build_heldout, candidate_pairs, twemoji_concepts
from tests.conftest import png_bytes
from training.pairs import read_concepts, read_pairs

# name -> colour of its (solid) image; equal colours make a pair that is not visibly different.
DRAWINGS = {
    "RED APPLE": (220, 30, 30), "GREEN APPLE": (40, 190, 40),
    "MAN COOK": (90, 60, 30), "WOMAN COOK": (230, 160, 200),
    "FRANCE FLAG": (20, 40, 160), "JAPAN FLAG": (250, 250, 250),
    "HEART": (200, 0, 60), "BROKEN HEART": (120, 0, 30),
    "BLUE CIRCLE": (10, 10, 10), "GREEN CIRCLE": (12, 10, 10),
    "WAVING HAND": (250, 200, 60),
}
TONES = {"1F3FB": (250, 220, 190), "1F3FF": (80, 50, 30)}


@pytest.fixture
def package(tmp_path) -> Path:
    root = tmp_path / "emoji-datasource-twitter"
    images = root / TWEMOJI_SUBDIR
    images.mkdir(parents=True)
    entries = []
    for order, (name, colour) in enumerate(DRAWINGS.items()):
        image = f"{order:04x}.png"
        (images / image).write_bytes(png_bytes(colour, (64, 64)))
        entry = {"name": name, "short_name": name.lower().replace(" ", "_"), "image": image, "sort_order": order, "has_img_twitter": True}
        if name == "WAVING HAND":
            entry["skin_variations"] = {}
            for tone, tone_colour in TONES.items():
                (images / f"{order:04x}-{tone}.png").write_bytes(png_bytes(tone_colour, (64, 64)))
                entry["skin_variations"][tone] = {"image": f"{order:04x}-{tone}.png", "has_img_twitter": True}
        entries.append(entry)
    entries.append({"name": "GHOST", "image": "missing.png", "sort_order": 99, "has_img_twitter": False})
    (root / "emoji.json").write_text(json.dumps(entries))
    return root


def test_kinds_come_from_the_words_that_differ(package):
    concepts = twemoji_concepts(package)
    assert "ghost" not in {c.caption for c in concepts}  # no Twitter drawing: not a concept
    assert {c.caption for c in concepts if c.tone} == {"waving hand: light skin tone", "waving hand: dark skin tone"}
    pairs = {(p.a.caption, p.b.caption): p.kind for p in candidate_pairs(concepts)}
    assert pairs[("green apple", "red apple")] == "colour"
    assert pairs[("man cook", "woman cook")] == "gender_age"
    assert pairs[("france flag", "japan flag")] == "word_swap"
    assert pairs[("heart", "broken heart")] == "insertion"
    assert pairs[("waving hand", "waving hand: dark skin tone")] == "skin_tone"
    assert pairs[("waving hand: light skin tone", "waving hand: dark skin tone")] == "skin_tone"
    assert pairs[("blue circle", "green circle")] == "colour"


def test_the_folder_holds_visibly_different_pairs_in_the_pairs_format(package, tmp_path):
    out = tmp_path / "heldout"
    result = build_heldout(package, out)
    assert result.dropped == {"not_visibly_different": 1}  # blue/green circle: two near-identical drawings
    # word swaps: france/japan flag and green apple/green circle
    assert result.kept == {"colour": 1, "gender_age": 1, "insertion": 1, "skin_tone": 2, "word_swap": 2}
    pairs = read_pairs(out / "pairs.jsonl")  # the reader `foil eval --pairs` uses: fields and images check out
    assert len(pairs) == result.pairs == 7
    assert all(p.image_a.parent == out / "images" and p.image_a != p.image_b for p in pairs)
    concepts = read_concepts(out / "concepts.jsonl")
    assert len(concepts) == result.concepts == len(DRAWINGS)  # one per default drawing, tones left to the pairs
    manifest = json.loads((out / "heldout.json").read_text())
    assert manifest["pairs_per_kind"] == result.kept and manifest["license"].startswith("CC-BY-4.0")
    # Rebuilt with a floor no pair reaches: the folder is replaced whole, and nothing is left beside it.
    assert build_heldout(package, out, min_pixel_difference=0.99).pairs == 0
    assert (out / "pairs.jsonl").read_text() == "" and sorted(p.name for p in tmp_path.iterdir()) == ["emoji-datasource-twitter", "heldout"]


def test_cli_builds_the_folder_and_reports_bad_input(package, tmp_path, capsys):
    assert main(["heldout-pairs", "--twemoji-dir", str(package), "--out", str(tmp_path / "h")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"] == 7 and report["dropped"] == {"not_visibly_different": 1}
    assert main(["heldout-pairs", "--twemoji-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "h2")]) == 2
    assert "no emoji.json" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="min_pixel_difference"):
        build_heldout(package, tmp_path / "h3", min_pixel_difference=1.5)
