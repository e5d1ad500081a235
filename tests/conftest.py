"""Shared fixtures: the real emoji sample, a real local HTTP server, a real local Ray."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from flows.environment import apply_defaults

apply_defaults()

from pipeline.core import schema as S# noqa: E402
from pipeline.demo.sample import ImageServer, emoji_items, fetch_emoji_sample  # noqa: E402
from pipeline.core.store import Dataset, shard_name  # noqa: E402

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

    from pipeline.core.runners import ensure_ray

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


def noise_png(rng: np.random.Generator, size: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_raw(ds: Dataset, shards: int, rows: int, size: int = 32, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    raw = ds.table(S.RAW)
    for s in range(shards):
        out = {name: [] for name in S.RAW_SCHEMA.names}
        for i in range(rows):
            url = f"http://h/{s}/{i}.png"
            out[S.SAMPLE_ID].append(S.sample_id(url, f"caption {i}"))
            out[S.URL].append(url)
            out[S.CAPTION].append(f"caption {i}")
            out[S.STATUS].append("success")
            out[S.IMAGE].append(noise_png(rng, size))
            for col in (S.ERROR, S.ERROR_KIND, S.WIDTH, S.HEIGHT, S.ORIGINAL_WIDTH, S.ORIGINAL_HEIGHT, S.SHA256):
                out[col].append(None)
        raw.write_shard(shard_name(s), pa.table(out, schema=S.RAW_SCHEMA))
    raw.write_manifest("crawl", {}, [S.URLS])


def sigkill_after_shards(cmd: list[str], markers: Path, after: int, cwd: Path, timeout: float = 180) -> int:
    """Start `cmd`, SIGKILL it once `after` shard markers exist in `markers`; return how many exist."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, cwd=cwd)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if markers.exists() and len(list(markers.glob("*.json"))) >= after:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(list(markers.glob("*.json")))


def make_emoji_raw(ds: Dataset, emoji_dir: Path, items, shards: int) -> None:
    """A `raw` table of real emoji images, as a crawl would have written it."""
    per = -(-len(items) // shards)
    raw = ds.table(S.RAW)
    for s in range(shards):
        out = {name: [] for name in S.RAW_SCHEMA.names}
        for it in items[s * per : (s + 1) * per]:
            url = f"http://h/{it.image}"
            out[S.SAMPLE_ID].append(S.sample_id(url, it.caption))
            out[S.URL].append(url)
            out[S.CAPTION].append(it.caption)
            out[S.STATUS].append("success")
            out[S.IMAGE].append((emoji_dir / "img/google/64" / it.image).read_bytes())
            for col in (S.ERROR, S.ERROR_KIND, S.WIDTH, S.HEIGHT, S.ORIGINAL_WIDTH, S.ORIGINAL_HEIGHT, S.SHA256):
                out[col].append(None)
        raw.write_shard(shard_name(s), pa.table(out, schema=S.RAW_SCHEMA))
    raw.write_manifest("crawl", {}, [S.URLS])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_agent_ports() -> list[str]:
    """`ray start` flags that put a node's agents on free ports of their own: several nodes on
    one machine (and any Ray another test started) would otherwise all want the defaults, and a
    head whose job agent cannot bind never takes a job."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]


def wait_for_http(url: str, timeout: float) -> bool:
    """Poll `url` until it answers (any status) or `timeout` seconds pass."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1, and the environment a user would set to reach it."""
    import s3fs

    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "foil-test", "AWS_SECRET_ACCESS_KEY": "foil-test", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert wait_for_http(endpoint, 60), "moto server did not start"
        s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches a filesystem per arguments, not per endpoint
        s3fs.S3FileSystem().mkdir("foil-bucket")
        yield env
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
