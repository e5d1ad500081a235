"""Local transformers models for the Img-Diff stage (a segmentation proposer, a captioner),
named by folder in the recipe and read offline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.stage import ConfigError


@dataclass
class LocalModel:
    processor: Any  # the folder's image processor
    model: Any  # in eval mode, on `device`
    device: str
    tokenizer: Any = None

    def pixels(self, images: list[np.ndarray]) -> Any:
        """The processor's pixel values for `images` (uint8 HWC arrays), on the model's device."""
        return self.processor(images=[np.ascontiguousarray(i) for i in images], return_tensors="pt")["pixel_values"].to(self.device)


def load_local_model(folder: str, auto_class: str, field: str, what: str, tokenizer: bool = False) -> LocalModel:
    """The model of `folder` by the transformers auto class named `auto_class`, on the GPU when
    there is one. A folder that holds no such model is a one-line error naming the field."""
    import torch
    import transformers

    try:
        processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        words = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True) if tokenizer else None
        model = getattr(transformers, auto_class).from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{field}: {folder}: not a loadable {what} ({str(exc).splitlines()[0]})") from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return LocalModel(processor, model.to(device).eval(), device, words)
