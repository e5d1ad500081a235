"""Model factory: open_clip architectures by name, or foil's own JSON configs in model_configs/.

Architectures are data. foil's configs (e.g. `foil-tiny-vit`, a laptop-sized ViT/transformer
two-tower used by tests and the demo) are registered with open_clip's registry, so the models
foil trains are plain open_clip models and their checkpoints load with
`open_clip.create_model_and_transforms(name, pretrained=PATH)`.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

CONFIG_DIR = Path(str(resources.files("training") / "model_configs"))


@functools.cache
def register_foil_configs() -> list[str]:
    """Add foil's model configs to open_clip's registry (once per process). Returns their names."""
    open_clip.add_model_config(CONFIG_DIR)
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def model_config(name: str) -> dict:
    register_foil_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        known = ", ".join(open_clip.list_models()[:8])
        raise KeyError(f"unknown model {name!r}: not an open_clip architecture nor a foil config ({known}, ...)")
    return cfg


def create_model(name: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> open_clip.CLIP:
    """An open_clip model that returns a dict (the loss's argument names), weights from a local
    path if given. Never downloads: `pretrained` must be a file."""
    register_foil_configs()
    model_config(name)
    if pretrained is not None and not Path(pretrained).is_file():
        raise FileNotFoundError(f"pretrained weights {pretrained!r} not found (foil never downloads weights)")
    model = open_clip.create_model(name, pretrained=pretrained, device=device, output_dict=True)
    return model


def tokenizer(name: str):
    """open_clip's BPE tokenizer (bundled vocabulary, no download) at the model's context length."""
    cfg = model_config(name)
    return open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"].get("context_length", 77))


def image_size(name: str) -> int:
    size = model_config(name)["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] uint8 -> [B, 3, H, W] float, normalised as open_clip's preprocessing does."""
    x = images_uint8.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(OPENAI_DATASET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def save_open_clip_checkpoint(model: torch.nn.Module, path: Path, step: int, name: str) -> None:
    """Write the state dict the way open_clip_train does ({'state_dict', 'name', ...})."""
    state = {k.removeprefix("module."): v for k, v in model.state_dict().items()}
    torch.save({"name": name, "step": step, "state_dict": state}, path)


def describe(name: str) -> str:
    return json.dumps(model_config(name), sort_keys=True)
