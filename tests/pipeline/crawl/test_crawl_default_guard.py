"""The default a new user gets: `foil crawl` without `--recipe` against a loopback server.

The built-in default recipe must refuse loopback addresses: the server receives no request at
all (not even for robots.txt), every row of `raw` is `blocked_address`, and the command says how
many rows it refused and why.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import schema as S
from pipeline.core.store import Dataset
from pipeline.demo.sample import IMAGE_SUBDIR, ImageServer

REPO = Path(__file__).resolve().parents[3]


def test_foil_crawl_without_a_recipe_refuses_loopback(tmp_path, emoji_dir, few_emoji):
    requests: list[str] = []
    lock = threading.Lock()

    class Counting(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            with lock:
                requests.append(self.path)
            super().do_GET()

    with ImageServer(emoji_dir, handler=Counting) as server:
        host, port = server.address.rsplit(":", 1)
        urls = [f"{server.url}/{IMAGE_SUBDIR}/{it.image}" for it in few_emoji[:20]]
        urls += [f"http://localhost:{port}/{IMAGE_SUBDIR}/{it.image}" for it in few_emoji[20:25]]
        url_file = tmp_path / "urls.parquet"
        pq.write_table(pa.table({"url": urls, "caption": [f"emoji {i}" for i in range(len(urls))]}), url_file)
        ds = tmp_path / "ds"
        proc = subprocess.run(
            [sys.executable, "-m", "flows.cli", "crawl", "--dataset", str(ds), "--urls", str(url_file)],
            cwd=REPO, capture_output=True, text=True, timeout=540,
        )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert requests == []
    raw = Dataset(ds).table(S.RAW).read(columns=[S.STATUS, S.ERROR_KIND])
    assert raw.num_rows == len(urls)
    assert set(raw[S.STATUS].to_pylist()) == {"blocked_address"}
    assert set(raw[S.ERROR_KIND].to_pylist()) == {"blocked_address"}
    assert f"refused {len(urls)} rows: blocked_address {len(urls)}" in proc.stderr
