"""The crawl stage against a real HTTP server on 127.0.0.1 that mixes good and bad responses.

Every input row must come out exactly once, in input order, with the right status and error
kind; the good images must all be there. Nothing here sends traffic anywhere but loopback: the
private and link-local addresses in the guard test are refused before any socket is opened.
"""

from __future__ import annotations

import http.server
import struct
import time
import zlib
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.core import schema as S
from pipeline.crawl.crawl import CrawlStage, error_kind
from pipeline.crawl.fetch import address_problem, url_problem
from pipeline.demo.sample import IMAGE_SUBDIR, ImageServer

APPLE = "1f34e.png"


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels; tiny on the wire."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


class FaultyHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, body: bytes, content_type: str = "image/png", length: int | None = None, extra: dict | None = None):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _apple(self) -> bytes:
        return (Path(self.directory) / IMAGE_SUBDIR / APPLE).read_bytes()

    def do_GET(self):  # noqa: C901  (one branch per fault, on purpose)
        path = self.path.split("?")[0]
        if path == "/optout.png":
            self._send(self._apple(), extra={"X-Robots-Tag": "noai, noimageai"})
        elif path == "/corrupt.png":
            self._send(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
        elif path == "/page.png":
            self._send(b"<html><body>not an image</body></html>" * 20)
        elif path == "/truncated.png":
            self._send(self._apple()[:200], length=len(self._apple()))  # the connection closes early
        elif path == "/half.png":
            self._send(self._apple()[: len(self._apple()) // 2])
        elif path == "/slow.png":
            time.sleep(6)
            self._send(self._apple())
        elif path == "/trickle.png":
            body = self._apple()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(0, len(body), 64):  # each chunk within the socket timeout, the whole far past the deadline
                self.wfile.write(body[i : i + 64])
                self.wfile.flush()
                time.sleep(0.15)
        elif path == "/declared-huge.png":
            self._send(b"x" * 100, length=50 << 20)
        elif path == "/streamed-huge.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()  # HTTP/1.0, no length: read until close
            for _ in range(40):
                self.wfile.write(b"\0" * (64 << 10))
        elif path == "/bomb.png":
            self._send(_bomb_png(30000, 30000))  # past PIL's own limit too
        elif path == "/big-canvas.png":
            self._send(_bomb_png(5000, 5000))  # under PIL's limit, over the stage's max_pixels
        elif path == "/redirect.png":
            self.send_response(302)
            self.send_header("Location", f"/{IMAGE_SUBDIR}/{APPLE}")
            self.end_headers()
        elif path in ("/loop-a", "/loop-b"):
            self.send_response(302)
            self.send_header("Location", "/loop-b" if path == "/loop-a" else "/loop-a")
            self.end_headers()
        elif path == "/error500":
            self.send_error(500)
        else:
            super().do_GET()


@pytest.fixture(scope="module")
def faulty_server(emoji_dir):
    with ImageServer(emoji_dir, handler=FaultyHandler) as server:
        yield server


def _batch(rows):
    return pa.RecordBatch.from_pydict(
        {S.SAMPLE_ID: [S.sample_id(u, c) for u, c in rows], S.URL: [u for u, _ in rows], S.CAPTION: [c for _, c in rows]}
    )


def _address(server) -> str:
    """The one address a test allows: its own server's."""
    return server.url.split("://", 1)[1]


def _crawl(rows, **params) -> tuple[pa.Table, CrawlStage]:
    defaults = dict(image_size=32, resize_mode="border", encode_format="png", encode_quality=6, thread_count=16, timeout=3)
    stage = CrawlStage(**{**defaults, **params})
    return pa.Table.from_batches(list(stage.run(iter([_batch(rows)])))), stage


# (path, expected status, expected error kind)
FAULTS = [
    (f"/{IMAGE_SUBDIR}/does-not-exist.png", "failed_to_download", "http_404"),
    ("/error500", "failed_to_download", "http_500"),
    ("/optout.png", "opted_out", "opt_out"),
    ("/corrupt.png", "failed_to_resize", "decode_error"),
    ("/page.png", "failed_to_resize", "decode_error"),
    ("/truncated.png", "failed_to_download", "truncated"),
    ("/half.png", "failed_to_resize", "decode_error"),
    ("/slow.png", "failed_to_download", "timeout"),
    ("/trickle.png", "failed_to_download", "too_slow"),
    ("/declared-huge.png", "too_large", "too_large"),
    ("/streamed-huge.png", "too_large", "too_large"),
    ("/bomb.png", "too_large", "too_many_pixels"),
    ("/big-canvas.png", "too_large", "too_many_pixels"),
    ("/redirect.png", "success", None),
    ("/loop-a", "failed_to_download", "redirect_loop"),
]


def test_faults_mixed_with_good_images(faulty_server, few_emoji):
    base = faulty_server.url
    good = [(f"{base}/{IMAGE_SUBDIR}/{it.image}", it.caption) for it in few_emoji[:30]]
    faults = [(f"{base}{path}", f"fault {i}") for i, (path, _, _) in enumerate(FAULTS)]
    invalid = [("file:///etc/passwd", "local file"), ("ftp://127.0.0.1/a.png", "ftp"), ("not a url", "garbage")]
    rows = good[:10] + faults + good[10:] + invalid
    out, stage = _crawl(rows, allow_addresses=[_address(faulty_server)], max_bytes=1 << 20, max_pixels=4096 * 4096, max_seconds_per_image=4)

    assert out.num_rows == len(rows)
    assert out[S.URL].to_pylist() == [u for u, _ in rows]
    by_caption = {r[S.CAPTION]: r for r in out.to_pylist()}
    for _, caption in good:
        row = by_caption[caption]
        assert row[S.STATUS] == "success" and row[S.IMAGE].startswith(b"\x89PNG") and row[S.WIDTH] == 32
    for i, (path, status, kind) in enumerate(FAULTS):
        row = by_caption[f"fault {i}"]
        assert (row[S.STATUS], row[S.ERROR_KIND]) == (status, kind), (path, row[S.ERROR])
        assert (row[S.IMAGE] is None) == (status != "success")
    for _, caption in invalid:
        assert (by_caption[caption][S.STATUS], by_caption[caption][S.ERROR_KIND]) == ("invalid_url", "invalid_url")
    counts = stage.stats.as_dict()["counts"]
    assert counts["status:success"] == len(good) + 1
    assert sum(v for k, v in counts.items() if k.startswith("status:")) == len(rows)


def test_private_addresses_are_refused_by_default(faulty_server):
    port = faulty_server.url.rsplit(":", 1)[1]
    rows = [
        (f"http://127.0.0.1:{port}/{IMAGE_SUBDIR}/{APPLE}", "loopback"),
        (f"http://localhost:{port}/{IMAGE_SUBDIR}/{APPLE}", "localhost"),
        ("http://10.20.30.40/a.png", "private"),  # refused before any socket is opened
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        (f"http://[::1]:{port}/a.png", "ipv6 loopback"),
        (f"http://127.0.0.1:{port}/redirect.png", "loopback redirect"),
    ]
    out, _ = _crawl(rows)
    assert out[S.STATUS].to_pylist() == ["blocked_address"] * len(rows)
    assert set(out[S.ERROR_KIND].to_pylist()) == {"blocked_address"}
    assert "resolves to loopback" in out[S.ERROR][0].as_py()


def test_redirect_to_a_private_address_is_refused(emoji_dir):
    class Redirector(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", "http://10.20.30.40/a.png")
            self.end_headers()

    with ImageServer(emoji_dir, handler=Redirector) as server:
        out, _ = _crawl([(f"{server.url}/start.png", "redirect")], allow_private_addresses=False)
    # the first hop (loopback) is refused already; with loopback allowed, the private hop is.
    assert out[S.STATUS].to_pylist() == ["blocked_address"]


@pytest.mark.parametrize(
    "ip, problem",
    [("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("192.168.1.1", "private"), ("169.254.1.1", "link-local"),
     ("::1", "loopback"), ("fe80::1", "link-local"), ("::ffff:127.0.0.1", "loopback"), ("0.0.0.0", "unspecified"),
     ("93.184.216.34", None), ("2606:4700::1111", None)],
)
def test_address_problem(ip, problem):
    assert address_problem(ip) == problem


@pytest.mark.parametrize(
    "url, ok",
    [("http://h/a.png", True), ("https://h:8443/a", True), ("file:///etc/passwd", False), ("h/a.png", False), ("http://", False), ("http://h:99999/", False)],
)
def test_url_problem(url, ok):
    assert (url_problem(url) is None) == ok


def test_error_kinds():
    assert error_kind("success", None) is None
    assert error_kind("failed_to_download", "HTTP Error 403: Forbidden") == "http_403"
    assert error_kind("failed_to_download", "<urlopen error [Errno 111] Connection refused>") == "connection_refused"
    assert error_kind("failed_to_resize", "image decode error") == "decode_error"
    assert error_kind("failed_to_download", "something new") == "other"
