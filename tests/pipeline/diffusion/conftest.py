"""Tiny random-weight pipelines, built once for the diffusion tests (CPU, fp32)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_txt2img():
    from pipeline.diffusion import load_pipeline

    return load_pipeline("tiny:txt2img", device="cpu")


@pytest.fixture(scope="session")
def tiny_sdxl():
    from pipeline.diffusion import load_pipeline

    return load_pipeline("tiny:sdxl", device="cpu")


@pytest.fixture(scope="session")
def tiny_inpaint():
    from pipeline.diffusion import load_pipeline

    return load_pipeline("tiny:inpaint", device="cpu")
