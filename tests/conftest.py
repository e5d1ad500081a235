"""Shared fixtures: the real emoji sample, a real local HTTP server, a real local Ray."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

from pipeline.sample import ImageServer, emoji_items, fetch_emoji_sample  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def emoji_dir() -> Path:
    """The unpacked emoji package (fetched by `make test` before pytest starts)."""
    return fetch_emoji_sample()


@pytest.fixture(scope="session")
def emoji_server(emoji_dir: Path):
    with ImageServer(emoji_dir) as server:
        yield server


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from pipeline.runners import ensure_ray

    ensure_ray()
    yield ray
    ray.shutdown()


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (48, 48)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def few_emoji(emoji_dir: Path):
    return emoji_items(emoji_dir, 40)
