"""The demo's real sample and the local HTTP server that serves it to the crawler.

The sample is npm's `emoji-datasource-google` (Noto emoji, Apache-2.0): 64 px PNGs and, in
`emoji.json`, a name for each, which becomes its caption ("red apple", "woman cook"). It is
fetched once with `npm pack` from the npm registry into a cache folder and reused afterwards.

`ImageServer` is a threaded `http.server` bound to 127.0.0.1 (or another loopback address) on a
free port, so the demo and the tests crawl for real over HTTP without leaving this machine. The
crawler refuses loopback addresses by default; whoever starts a server allows exactly its
`address` (crawl param `allow_addresses`), nothing else.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.cache import default_cache_dir
from pipeline.core.stage import ConfigError

EMOJI_PACKAGE = "emoji-datasource-google"
EMOJI_VERSION = "16.0.0"
IMAGE_SUBDIR = "img/google/64"


def emoji_sample_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"{EMOJI_PACKAGE}-{EMOJI_VERSION}"


def fetch_emoji_sample(cache_dir: Path | None = None) -> Path:
    """Return the unpacked sample folder, downloading it with `npm pack` if it is not cached."""
    return fetch_npm_images(EMOJI_PACKAGE, EMOJI_VERSION, IMAGE_SUBDIR, emoji_sample_dir(cache_dir))


def fetch_npm_images(package: str, version: str, image_subdir: str, target: Path) -> Path:
    """Unpack `emoji.json`, `LICENSE` and the PNGs under `image_subdir` of an npm emoji-datasource
    package into `target` with `npm pack`, unless they are there already (the held-out Twemoji
    set is fetched the same way as the sample)."""
    if (target / "emoji.json").exists() and (target / image_subdir).is_dir():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise ConfigError(f"npm is needed once to fetch {package} (apt-get install npm), or pass --sample-dir")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        proc = subprocess.run(
            [npm, "pack", f"{package}@{version}", "--silent"], cwd=tmp, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise ConfigError(f"npm pack {package}@{version} failed: {proc.stderr.strip()[-300:]}")
        tarball = next(Path(tmp).glob("*.tgz"))
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if m.name in ("package/emoji.json", "package/LICENSE") or m.name.startswith(f"package/{image_subdir}/")]
            tar.extractall(unpacked, members=members, filter="data")
        os.replace(unpacked / "package", target)  # atomic: a half-unpacked sample is never seen
    return target


@dataclass(frozen=True)
class EmojiItem:
    image: str  # file name under img/google/64
    caption: str
    category: str


def emoji_items(sample_dir: Path, limit: int | None = None) -> list[EmojiItem]:
    """Emoji with an image, captioned by their lower-cased Unicode name, in the package's order."""
    try:
        entries = json.loads((sample_dir / "emoji.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{sample_dir}: no emoji.json; is this an unpacked {EMOJI_PACKAGE} package?") from None
    items = []
    for e in sorted(entries, key=lambda e: e.get("sort_order", 0)):
        if not e.get("has_img_google") or not (sample_dir / IMAGE_SUBDIR / e["image"]).exists():
            continue
        name = (e.get("name") or e.get("short_name") or "").strip().lower()
        if name:
            items.append(EmojiItem(e["image"], name, e.get("category") or ""))
    return items[:limit] if limit else items


def write_url_list(items: list[EmojiItem], base_url: str, path: Path) -> Path:
    table = pa.table(
        {
            "url": [f"{base_url}/{IMAGE_SUBDIR}/{it.image}" for it in items],
            "caption": [it.caption for it in items],
            "category": [it.category for it in items],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (stdlib signature)
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up mid-response (a crawler's timeout, a finished process) is normal
        # for this server; anything else is printed as socketserver prints it.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class ImageServer:
    """Serve a folder over HTTP on a loopback address from a background thread. Use as a context manager."""

    def __init__(self, root: Path, port: int = 0, handler: type[http.server.BaseHTTPRequestHandler] | None = None, host: str = "127.0.0.1"):
        """`port` 0 picks a free port; a busy fixed port falls back to a free one. `host` may be any
        loopback address (127.0.0.2, ...: on Linux each works without set-up), so tests can
        stand up several "hosts"."""
        self.root = Path(root)
        factory = functools.partial(handler or _QuietHandler, directory=str(self.root))
        try:
            self._httpd = _Server((host, port), factory)
        except OSError:
            self._httpd = _Server((host, 0), factory)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="foil-image-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def address(self) -> str:
        """`ADDRESS:PORT`, what a crawl allows to reach this server (`allow_addresses`)."""
        host, port = self._httpd.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self) -> "ImageServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
