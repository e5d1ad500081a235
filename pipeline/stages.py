"""Every built-in stage by its registry key. Importing this module imports each stage's package,
whose modules register their stages with `pipeline.core.stage.register`; the core itself never
imports a stage, so imports run one way (stages -> core)."""

from __future__ import annotations

from typing import Any

from pipeline import crawl, curate, embed, export, negatives  # noqa: F401  (registers their stages)
from pipeline import imgdiff  # noqa: F401  (registers imgdiff_generate)
from pipeline.core.stage import ConfigError, Stage, build, registered


def stage_names() -> list[str]:
    return sorted(registered())


def stage_class(name: str) -> type[Stage]:
    known = registered()
    if name not in known:
        raise ConfigError(f"unknown stage {name!r}; known stages: {', '.join(sorted(known))}")
    return known[name]


def build_stage(name: str, params: dict[str, Any] | None = None) -> Stage:
    """Instantiate a registered stage from its name and keyword parameters (validated here)."""
    return build(stage_class(name), params)
