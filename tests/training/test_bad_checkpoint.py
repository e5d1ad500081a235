"""A file that is not a checkpoint of the model fails with one line naming the file, never with
whatever open_clip's loader happens to trip over (IndexError, StopIteration, a 5 kB RuntimeError)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.core.stage import ConfigError
from pipeline.models import factory as M

REPO = Path(__file__).resolve().parents[2]


def _bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "random_bytes": folder / "random.pt",
        "text": folder / "notes.pt",
        "no_state_dict": folder / "no_state_dict.pt",
        "empty_state_dict": folder / "empty.pt",
        "a_tensor": folder / "tensor.pt",
        "other_model": folder / "other.pt",
    }
    files["random_bytes"].write_bytes(random.Random(0).randbytes(4096))
    files["text"].write_text("these are not weights\n")
    torch.save({"name": "foil-tiny-vit", "step": 3}, files["no_state_dict"])
    torch.save({"name": "foil-tiny-vit", "state_dict": {}}, files["empty_state_dict"])
    torch.save(torch.zeros(3), files["a_tensor"])
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2, 2)}}, files["other_model"])
    return files


@pytest.mark.parametrize("kind", ["random_bytes", "text", "no_state_dict", "empty_state_dict", "a_tensor", "other_model"])
def test_create_model_and_load_encoder_name_the_file_that_is_not_a_checkpoint(tmp_path, kind):
    path = _bad_files(tmp_path)[kind]
    for load, arch in ((M.create_model, "foil-tiny-vit"), (M.load_encoder, "foil-tiny-vit"), (M.create_model, "foil-tiny-vit-sigmoid")):
        with pytest.raises(ConfigError) as caught:
            load(arch, pretrained=str(path))
        message = str(caught.value)
        assert str(path) in message and "\n" not in message and len(message) < 300


def test_a_real_checkpoint_still_loads_and_reproduces_the_saved_model(tmp_path):
    torch.manual_seed(1)
    model = M.create_model("foil-tiny-vit").eval()
    path = tmp_path / "open_clip_model.pt"
    M.save_open_clip_checkpoint(model, path, 7, "foil-tiny-vit")
    loaded, tokenize, _ = M.load_encoder("foil-tiny-vit", pretrained=str(path))  # seeds 0: a different init
    text = tokenize(["a red apple", "a blue car"])
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(text), model.encode_text(text))


def test_foil_eval_with_a_bad_checkpoint_is_a_one_line_usage_error(tmp_path):
    # The checkpoint is read inside the Prefect task, and Prefect logs the task's traceback
    # before the CLI prints its one line; hence no "no Traceback" check on all of stderr here.
    bad = _bad_files(tmp_path / "bad")["random_bytes"]
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "eval", "--checkpoint", str(bad), "--dataset", str(tmp_path / "ds")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("foil eval:")]
    assert len(errors) == 1 and errors[0].startswith(f"foil eval: error: {bad}: not a checkpoint (")
    assert "IndexError" not in proc.stderr
