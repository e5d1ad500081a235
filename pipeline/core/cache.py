"""foil's cache folder (`$XDG_CACHE_HOME/foil`, else `~/.cache/foil`): the demo sample, WordNet's
prepared copy and generated model configs live there. Nothing is downloaded into it at run time
except the sample, and only by `foil fetch-sample`."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "foil"
