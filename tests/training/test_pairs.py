"""Minimal-pair evaluation: an embedder that knows each caption's image scores 100%, random
embeddings score chance, the CLI reads the pairs file and agrees with the library, and a bad
file is one line naming file, line and field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.cli import main
from pipeline.core.stage import ConfigError
from pipeline.models import factory as M
from tests.conftest import png_bytes
from training.pairs import ModelEmbedder, evaluate_files, read_pairs, score_pairs, score_retrieval, read_concepts

N_PAIRS = 2000
KINDS = ("colour", "skin_tone", "gender_age", "word_swap")


def _write_pairs(root: Path, n: int) -> Path:
    """n pairs over 2n distinct concepts, images as tiny PNG files under root/images."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    blob = png_bytes((200, 30, 30), (4, 4))
    with open(root / "pairs.jsonl", "w") as f:
        for i in range(n):
            for side in "ab":
                (root / "images" / f"{i}{side}.png").write_bytes(blob)
            f.write(json.dumps({"image_a": f"images/{i}a.png", "image_b": f"images/{i}b.png", "caption_a": f"concept {i} a",
                                "caption_b": f"concept {i} b", "kind": KINDS[i % len(KINDS)]}) + "\n")
    return root / "pairs.jsonl"


class OneHotEmbedder:
    """Each concept is one axis: an image and its caption share it (the caption is read from the file name)."""

    def __init__(self, n: int):
        self.n = 2 * n

    def _axis(self, key: str) -> np.ndarray:
        i, side = int(key[:-1]), key[-1]
        v = np.zeros(self.n, dtype=np.float32)
        v[2 * i + (side == "b")] = 1.0
        return v

    def images(self, paths):
        return np.stack([self._axis(Path(p).stem) for p in paths])

    def texts(self, captions):
        return np.stack([self._axis(c.split()[1] + c.split()[2]) for c in captions])


class RandomEmbedder:
    def __init__(self, seed: int, dim: int = 64):
        self.rng, self.dim = np.random.default_rng(seed), dim

    def _rows(self, n: int) -> np.ndarray:
        x = self.rng.standard_normal((n, self.dim))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def images(self, paths):
        return self._rows(len(paths))

    def texts(self, captions):
        return self._rows(len(captions))


def test_an_embedder_that_identifies_captions_with_images_scores_100(tmp_path):
    scores = score_pairs(OneHotEmbedder(N_PAIRS), read_pairs(_write_pairs(tmp_path, N_PAIRS)))
    assert set(scores) == {*KINDS, "all"}
    for kind, values in scores.items():
        assert values["text_score"] == values["image_score"] == values["group_score"] == values["pair_accuracy"] == 1.0, kind
    assert scores["all"]["pairs"] == N_PAIRS and scores["colour"]["pairs"] == N_PAIRS / len(KINDS)


def test_random_embeddings_score_chance(tmp_path):
    scores = score_pairs(RandomEmbedder(seed=0), read_pairs(_write_pairs(tmp_path, N_PAIRS)))["all"]
    # Each single comparison is a fair coin; a pair's four share vectors, so bound the spread as
    # if only the N pair outcomes were independent: sd <= sqrt(p(1-p)/N), and allow 4 sd.
    def tolerance(p: float) -> float:
        return 4 * math.sqrt(p * (1 - p) / N_PAIRS)

    assert abs(scores["pair_accuracy"] - 0.5) < tolerance(0.5)  # 0.045 for 2,000 pairs
    assert abs(scores["text_score"] - 0.25) < tolerance(0.25)
    assert abs(scores["image_score"] - 0.25) < tolerance(0.25)
    assert abs(scores["group_score"] - 1 / 6) < tolerance(1 / 6)  # Winoground's group chance: 1/6


def test_retrieval_is_perfect_for_one_hot_and_near_chance_for_random(tmp_path):
    pairs = read_pairs(_write_pairs(tmp_path, 50))
    concepts = [(p.image_a, p.caption_a) for p in pairs] + [(p.image_b, p.caption_b) for p in pairs]
    exact = score_retrieval(OneHotEmbedder(50), concepts)
    assert exact["image_to_text_R@1"] == exact["text_to_image_R@1"] == 1.0 and exact["concepts"] == 100
    chance = score_retrieval(RandomEmbedder(seed=1), concepts)
    assert chance["image_to_text_R@5"] < 0.2  # chance is 5 in 100


def test_a_wrong_embedder_scores_zero(tmp_path):
    """Swapping the captions of every pair turns every comparison around."""
    path = _write_pairs(tmp_path, 40)
    swapped = [json.loads(line) for line in path.read_text().splitlines()]
    for item in swapped:
        item["caption_a"], item["caption_b"] = item["caption_b"], item["caption_a"]
    path.write_text("".join(json.dumps(i) + "\n" for i in swapped))
    assert score_pairs(OneHotEmbedder(40), read_pairs(path))["all"]["pair_accuracy"] == 0.0


def test_bad_files_name_file_line_and_field(tmp_path):
    path = _write_pairs(tmp_path, 3)
    lines = path.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n" + json.dumps({**json.loads(lines[1]), "caption_b": ""}) + "\n")
    with pytest.raises(ConfigError, match=r"bad\.jsonl: line 2: missing or empty field 'caption_b'"):
        read_pairs(bad)
    bad.write_text(json.dumps({**json.loads(lines[0]), "image_b": "images/nope.png"}) + "\n")
    with pytest.raises(ConfigError, match=r"bad\.jsonl: line 1: image .*nope\.png not found"):
        read_pairs(bad)
    bad.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(ConfigError, match=r"bad\.jsonl: line 2: not valid JSON"):
        read_pairs(bad)


def test_older_json_list_format_reads_with_the_file_name_as_kind(tmp_path):
    _write_pairs(tmp_path, 2)
    old = tmp_path / "colours.json"
    old.write_text(json.dumps([{"image_0": "images/0a.png", "image_1": "images/0b.png", "caption_0": "concept 0 a", "caption_1": "concept 0 b"}]))
    pairs = read_pairs(old)
    assert len(pairs) == 1 and pairs[0].kind == "colours" and pairs[0].image_b == tmp_path / "images/0b.png"


def test_cli_eval_reads_the_pairs_file_and_agrees_with_the_library(tmp_path, capsys):
    pairs = _write_pairs(tmp_path, 12)
    concepts = tmp_path / "concepts.jsonl"
    concepts.write_text("".join(json.dumps({"image": f"images/{i}a.png", "caption": f"concept {i} a"}) + "\n" for i in range(12)))
    torch.manual_seed(0)
    model = M.create_model("foil-tiny-vit")
    weights = tmp_path / "open_clip_model.pt"
    M.save_open_clip_checkpoint(model, weights, 0, "foil-tiny-vit")
    expected = evaluate_files(ModelEmbedder(M.create_model("foil-tiny-vit", pretrained=str(weights)), "foil-tiny-vit"), [str(pairs)], [str(concepts)])
    assert main(["eval", "--checkpoint", str(weights), "--pairs", str(pairs), "--retrieval", str(concepts)]) == 0
    printed = json.loads(capsys.readouterr().out)
    for name in ("pairs:pairs:pair_accuracy", "pairs:pairs:colour:group_score", "retrieval:concepts:image_to_text_R@1"):
        assert printed[name] == pytest.approx(expected[name]), name
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image_a": "images/0a.png"}) + "\n")
    assert main(["eval", "--checkpoint", str(weights), "--pairs", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl: line 1: missing or empty field 'image_b'" in err and "Traceback" not in err


def test_concepts_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "concepts.jsonl"
    bad.write_text(json.dumps({"image": "x.png"}) + "\n")
    with pytest.raises(ConfigError, match=r"concepts\.jsonl: line 1: missing or empty field 'caption'"):
        read_concepts(bad)
