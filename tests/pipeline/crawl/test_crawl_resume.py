"""SIGKILL at a random point during a crawl, then rerun: the same rows as an uninterrupted crawl."""

from __future__ import annotations

import http.server
import os
import random
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import schema as S
from pipeline import steps
from flows.recipe import parse_recipe
from pipeline.demo.sample import IMAGE_SUBDIR, ImageServer, emoji_items
from pipeline.core.store import Dataset
from tests.conftest import sigkill_after_shards

REPO = Path(__file__).resolve().parents[3]
SHARDS, ROWS = 12, 30
RECIPE = {
    "runner": {"kind": "local"},
    "crawl": {"shard_rows": ROWS, "params": {"image_size": 32, "resize_mode": "border", "encode_format": "png", "encode_quality": 6, "thread_count": 4}},
}

CRAWL = textwrap.dedent(
    f"""
    import sys
    from pipeline import steps
    from flows.recipe import parse_recipe
    from pipeline.core.store import Dataset
    recipe = parse_recipe({RECIPE!r})
    recipe.crawl_params["allow_addresses"] = [sys.argv[3]]  # only the test's own server
    steps.crawl(Dataset(sys.argv[1]), [sys.argv[2]], recipe.crawl_params, recipe.runner(progress=False), **recipe.ingest)
    """
)


class _SlowishHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        time.sleep(0.02)  # a crawl that lasts a few seconds, so the kill lands mid-way
        super().do_GET()


def _rows(ds: Dataset) -> list[tuple]:
    t = ds.table(S.RAW).read(columns=[S.SAMPLE_ID, S.STATUS, S.SHA256])
    return sorted(zip(*(t[c].to_pylist() for c in t.column_names)))


def test_sigkill_mid_crawl_then_rerun_matches_an_uninterrupted_crawl(tmp_path, emoji_dir):
    items = emoji_items(emoji_dir, SHARDS * ROWS - 5)
    with ImageServer(emoji_dir, handler=_SlowishHandler) as server:
        urls = [f"{server.url}/{IMAGE_SUBDIR}/{it.image}" for it in items] + [f"{server.url}/missing-{i}.png" for i in range(5)]
        url_file = tmp_path / "urls.parquet"
        pq.write_table(pa.table({"url": urls, "caption": [it.caption for it in items] + ["missing"] * 5}), url_file)

        address = server.url.split("://", 1)[1]
        recipe = parse_recipe(RECIPE)
        recipe.crawl_params["allow_addresses"] = [address]
        reference = Dataset(tmp_path / "reference")
        steps.crawl(reference, [str(url_file)], recipe.crawl_params, recipe.runner(progress=False), **recipe.ingest)

        killed = Dataset(tmp_path / "killed")
        markers = tmp_path / "killed" / S.RAW / "_shards"
        kill_after = random.Random(os.getpid()).randint(1, SHARDS - 3)
        done = sigkill_after_shards([sys.executable, "-c", CRAWL, killed.root, str(url_file), address], markers, kill_after, REPO)
        assert 0 < done < SHARDS

        report = steps.crawl(killed, [str(url_file)], recipe.crawl_params, recipe.runner(progress=False), **recipe.ingest)

    assert report["shards_skipped"] >= kill_after
    assert _rows(killed) == _rows(reference)
    statuses = [status for _, status, _ in _rows(killed)]
    assert len(statuses) == SHARDS * ROWS and statuses.count("success") == SHARDS * ROWS - 5
