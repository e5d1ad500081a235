"""Loading diffusion pipelines: a local diffusers folder, a single checkpoint file, or a tiny
random-weight pipeline built in code (`tiny:txt2img`, `tiny:inpaint`, `tiny:sdxl`).

Nothing is downloaded: loads are `local_files_only` with the hub offline. A bad spec is a
one-line `ConfigError` naming the recipe field it came from. Half precision on CUDA (bf16 where
the card has it, else fp16), fp32 on CPU. A load is per process: callers that load repeatedly
(a Ray actor, a stage instance) keep the result on themselves through `PipelineCache`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.stage import ConfigError
from pipeline.diffusion.tiny import TINY_BUILDERS, TINY_PREFIX, build_tiny, clip_tokenizers

KINDS = ("txt2img", "inpaint", "sdxl")
AUTO = "auto"
# model_index.json's `_class_name` -> kind. A folder of another class is refused by name.
PIPELINE_CLASS_KINDS: dict[str, str] = {
    "StableDiffusionPipeline": "txt2img",
    "StableDiffusionInpaintPipeline": "inpaint",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "inpaint",
}
# kind -> the diffusers class a single checkpoint file is read with.
SINGLE_FILE_CLASSES: dict[str, str] = {
    "txt2img": "StableDiffusionPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


@dataclass
class LoadedPipeline:
    """A diffusers pipeline ready to run, and what foil records about it."""

    pipe: Any
    id: str  # the folder or file as given, or "tiny:<kind>"
    kind: str  # txt2img | inpaint | sdxl
    random_weights: bool  # tiny pipelines: their images must never be trained on
    device: str
    dtype: Any  # torch.dtype
    # CLIP's fast tokenizer (character offsets); made on first use, see `fast_tokenizer`.
    tokenizer_fast: Any = field(default=None, repr=False)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def dtype_for(device: str) -> Any:
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _kind_of_single_file(path: Path, field_name: str) -> str:
    """Read a checkpoint's tensor names and shapes (not its weights) to tell its kind."""
    if path.suffix != ".safetensors":
        raise ConfigError(f"{field_name}: {path}: give the kind (txt2img, inpaint or sdxl) for a .ckpt file")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            conv_in = next((k for k in ("model.diffusion_model.input_blocks.0.0.weight",) if k in keys), None)
            channels = f.get_slice(conv_in).get_shape()[1] if conv_in else 4
    except Exception as err:  # a truncated or foreign file: say so in one line
        raise ConfigError(f"{field_name}: {path}: not a readable safetensors checkpoint ({type(err).__name__})") from None
    if channels == 9:
        return "inpaint"
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    return "txt2img"


def _check_kind(kind: str, field_name: str) -> None:
    if kind != AUTO and kind not in KINDS:
        raise ConfigError(f"{field_name}: unknown pipeline kind {kind!r} (one of: {AUTO}, {', '.join(KINDS)})")


def _load_tiny(spec: str, kind: str, field_name: str) -> tuple[Any, str]:
    tiny_kind = spec[len(TINY_PREFIX):]
    if tiny_kind not in TINY_BUILDERS:
        raise ConfigError(f"{field_name}: unknown tiny pipeline {spec!r} (one of: {', '.join(TINY_PREFIX + k for k in TINY_BUILDERS)})")
    if kind not in (AUTO, tiny_kind):
        raise ConfigError(f"{field_name}: {spec} is a {tiny_kind} pipeline, not {kind}")
    return build_tiny(tiny_kind), tiny_kind


def _load_folder(path: Path, kind: str, dtype: Any, field_name: str) -> tuple[Any, str]:
    index = path / "model_index.json"
    if not index.is_file():
        raise ConfigError(f"{field_name}: {path} is not a diffusers pipeline folder (no model_index.json)")
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError):
        raise ConfigError(f"{field_name}: {index}: unreadable model_index.json") from None
    found = PIPELINE_CLASS_KINDS.get(class_name)
    if found is None:
        raise ConfigError(f"{field_name}: {path}: unsupported pipeline class {class_name!r} (supported: {', '.join(PIPELINE_CLASS_KINDS)})")
    if kind not in (AUTO, found):
        raise ConfigError(f"{field_name}: {path} holds a {found} pipeline ({class_name}), not {kind}")
    import diffusers

    try:
        pipe = getattr(diffusers, class_name).from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
    except Exception as err:  # missing component folders, bad weights: one line, not a traceback
        raise ConfigError(f"{field_name}: {path}: cannot load ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})") from None
    return pipe, found


def _load_single_file(path: Path, kind: str, dtype: Any, field_name: str, config: str | None) -> tuple[Any, str]:
    found = _kind_of_single_file(path, field_name) if kind == AUTO else kind
    import diffusers

    cls = getattr(diffusers, SINGLE_FILE_CLASSES[found])
    try:
        pipe = cls.from_single_file(str(path), torch_dtype=dtype, local_files_only=True, **({"config": config} if config else {}))
    except Exception as err:  # offline without the model's config folder, or a bad file
        raise ConfigError(
            f"{field_name}: {path}: cannot load as {found} offline ({type(err).__name__}); a single file needs its "
            f"diffusers config folder in the local cache or given as config="
        ) from None
    return pipe, found


def load_pipeline(spec: str, kind: str = AUTO, device: str | None = None, field: str = "neg_image.pipeline", config: str | None = None) -> LoadedPipeline:
    """Load `spec` (a folder with model_index.json, a .safetensors/.ckpt file, or tiny:<kind>).

    `kind` checks (or, for a single file, chooses) what the pipeline does; `device` defaults to
    CUDA when there is one. `config` is a local diffusers config folder for single files."""
    _check_kind(kind, field)
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{field}: give a pipeline folder, a checkpoint file or tiny:<kind>")
    device = device or default_device()
    dtype = dtype_for(device)
    if spec.startswith(TINY_PREFIX):
        pipe, found = _load_tiny(spec, kind, field)
        random_weights = True
        if device != "cpu":  # built in fp32 on the CPU; moving it there again only logs warnings
            pipe = pipe.to(device=device, dtype=dtype)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            pipe, found = _load_folder(path, kind, dtype, field)
        elif path.is_file() and path.suffix in SINGLE_FILE_SUFFIXES:
            pipe, found = _load_single_file(path, kind, dtype, field, config)
        elif path.exists():
            raise ConfigError(f"{field}: {spec}: not a pipeline folder or a {'/'.join(SINGLE_FILE_SUFFIXES)} file")
        else:
            raise ConfigError(f"{field}: {spec}: no such folder or file")
        random_weights = False
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe=pipe, id=spec, kind=found, random_weights=random_weights, device=device, dtype=dtype)


def fast_tokenizer(loaded: LoadedPipeline) -> Any:
    """CLIP's fast tokenizer for `loaded` (character offsets of tokens), kept on `loaded`.

    Tiny pipelines and folders whose tokenizer has a tokenizer.json read it directly; otherwise
    it is converted once from the pipeline's own slow tokenizer files."""
    if loaded.tokenizer_fast is None:
        slow = loaded.pipe.tokenizer
        if getattr(slow, "is_fast", False):
            loaded.tokenizer_fast = slow
        elif loaded.random_weights:
            loaded.tokenizer_fast = clip_tokenizers()[1]
        else:
            from transformers import CLIPTokenizerFast

            loaded.tokenizer_fast = CLIPTokenizerFast(slow.vocab_file, slow.merges_file, model_max_length=slow.model_max_length)
    return loaded.tokenizer_fast


class PipelineCache:
    """One loaded pipeline per (spec, kind, device), kept on the object that owns the cache (a
    stage instance, a Ray actor), so a second request in the same process costs nothing and
    nothing lives in a module global."""

    def __init__(self, field: str = "neg_image.pipeline") -> None:
        self.field = field
        self._loaded: dict[tuple[str, str, str | None], LoadedPipeline] = {}

    def get(self, spec: str, kind: str = AUTO, device: str | None = None) -> LoadedPipeline:
        key = (spec, kind, device)
        if key not in self._loaded:
            self._loaded[key] = load_pipeline(spec, kind=kind, device=device, field=self.field)
        return self._loaded[key]
