"""The crawl stage against a real HTTP server on 127.0.0.1 that mixes good and bad responses."""

from __future__ import annotations

import http.server
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest

from pipeline import schema as S
from pipeline.crawl import CrawlStage
from pipeline.sample import IMAGE_SUBDIR, ImageServer


class _FaultyHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        if self.path == "/optout.png":
            body = (Path(self.directory) / IMAGE_SUBDIR / "1f34e.png").read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("X-Robots-Tag", "noai, noimageai")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/corrupt.png":
            body = b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/error500":
            self.send_error(500)
        else:
            super().do_GET()


@pytest.fixture(scope="module")
def faulty_server(emoji_dir):
    with ImageServer(emoji_dir, handler=_FaultyHandler) as server:
        yield server


def _batch(rows):
    urls = [u for u, _ in rows]
    caps = [c for _, c in rows]
    return pa.RecordBatch.from_pydict({S.SAMPLE_ID: [S.sample_id(u, c) for u, c in rows], S.URL: urls, S.CAPTION: caps})


def test_one_row_per_url_with_the_right_status(faulty_server, few_emoji):
    base = faulty_server.url
    good = [(f"{base}/{IMAGE_SUBDIR}/{it.image}", it.caption) for it in few_emoji[:20]]
    bad = [
        (f"{base}/{IMAGE_SUBDIR}/does-not-exist.png", "missing"),
        (f"{base}/error500", "server error"),
        (f"{base}/optout.png", "opted out"),
        (f"{base}/corrupt.png", "corrupt"),
        ("http://127.0.0.1:9/refused.png", "connection refused"),
    ]
    stage = CrawlStage(image_size=32, resize_mode="border", encode_format="png", encode_quality=6, thread_count=8, timeout=5)
    out = pa.Table.from_batches(list(stage.run(iter([_batch(good + bad)]))))

    assert out.num_rows == len(good) + len(bad)
    assert out[S.URL].to_pylist() == [u for u, _ in good + bad]  # input order kept
    status = dict(zip(out[S.CAPTION].to_pylist(), out[S.STATUS].to_pylist()))
    assert all(status[c] == "success" for _, c in good)
    assert status["missing"] == "failed_to_download"
    assert status["server error"] == "failed_to_download"
    assert status["opted out"] == "opted_out"
    assert status["corrupt"] == "failed_to_resize"
    assert status["connection refused"] == "failed_to_download"

    ok = out.filter(pa.compute.equal(out[S.STATUS], "success"))
    assert all(img is not None and img.startswith(b"\x89PNG") for img in ok[S.IMAGE].to_pylist())
    assert set(ok[S.WIDTH].to_pylist()) == {32} and set(ok[S.ORIGINAL_WIDTH].to_pylist()) == {64}
    failed = out.filter(pa.compute.not_equal(out[S.STATUS], "success"))
    assert failed[S.IMAGE].null_count == failed.num_rows
    assert all(failed[S.ERROR].to_pylist())
    counts = stage.stats.as_dict()["counts"]
    assert counts["status:success"] == 20 and counts["status:opted_out"] == 1
