"""Crawl throughput: foil vs plain img2dataset on the same url list, served from 127.0.0.1.

Both crawl the same N image urls (the emoji sample, repeated with distinct query strings) from
one local HTTP server, with the same parallelism (2 processes x 32 threads; foil: 2 Ray tasks at
a time, each running img2dataset's downloader with 32 threads), the same resize and encoding.
Prints images/s for both and the ratio foil / img2dataset.

    .venv/bin/python tests/benchmarks/crawl.py [--urls 2400]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PROCESSES, THREADS = 2, 32
RESIZE = dict(image_size=64, resize_mode="border", encode_format="png", encode_quality=6)


def url_list(base: str, items, n: int, path: Path) -> Path:
    from pipeline.demo.sample import IMAGE_SUBDIR

    urls, captions = [], []
    copy = 0
    while len(urls) < n:
        for it in items:
            if len(urls) == n:
                break
            urls.append(f"{base}/{IMAGE_SUBDIR}/{it.image}?copy={copy}")
            captions.append(it.caption)
        copy += 1
    pq.write_table(pa.table({"url": urls, "caption": captions}), path)
    return path


def run_img2dataset(urls: Path, out: Path, n: int) -> tuple[float, int]:
    from img2dataset import download

    start = time.perf_counter()
    download(
        url_list=str(urls), input_format="parquet", url_col="url", caption_col="caption", output_format="parquet",
        output_folder=str(out), processes_count=PROCESSES, thread_count=THREADS,
        number_sample_per_shard=n // PROCESSES // 2, timeout=10, extract_exif=False, compute_hash="sha256",
        distributor="multiprocessing", **RESIZE,
    )
    seconds = time.perf_counter() - start
    ok = 0
    for f in out.glob("*.parquet"):
        t = pq.read_table(f, columns=["status"])
        ok += t["status"].to_pylist().count("success")
    return seconds, ok


def run_foil(urls: Path, out: Path, n: int, allow: str) -> tuple[float, int, float]:
    from pipeline import steps
    from flows.recipe import parse_recipe
    from pipeline.core.runners import ensure_ray
    from pipeline.core.store import Dataset

    start = time.perf_counter()
    ensure_ray()  # timed apart: on a cluster it is up already; img2dataset's pool start-up is in its time
    ray_init = time.perf_counter() - start
    recipe = parse_recipe(
        {"runner": {"kind": "ray"}, "crawl": {"shard_rows": n // PROCESSES // 2, "params": {**RESIZE, "thread_count": THREADS, "allow_addresses": [allow]}}}
    )
    start = time.perf_counter()
    report = steps.crawl(Dataset(out), [str(urls)], recipe.crawl_params, recipe.runner(progress=False), **recipe.ingest)
    seconds = time.perf_counter() - start
    return seconds, report["stats"]["counts"].get("status:success", 0), ray_init


def main() -> None:
    from flows.environment import apply_defaults

    apply_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=2400)
    args = parser.parse_args()

    from pipeline.demo.sample import ImageServer, emoji_items, fetch_emoji_sample

    sample = fetch_emoji_sample()
    work = Path(tempfile.mkdtemp(prefix="foil-bench-crawl-"))
    try:
        with ImageServer(sample) as server:
            urls = url_list(server.url, emoji_items(sample), args.urls, work / "urls.parquet")
            i2d_s, i2d_ok = run_img2dataset(urls, work / "img2dataset", args.urls)
            foil_s, foil_ok, ray_init = run_foil(urls, work / "foil", args.urls, server.address)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    i2d_rate, foil_rate = i2d_ok / i2d_s, foil_ok / foil_s
    print(f"urls: {args.urls}, parallelism: {PROCESSES} x {THREADS} threads")
    print(f"img2dataset: {i2d_ok} images in {i2d_s:.2f} s = {i2d_rate:.1f} images/s")
    print(f"foil:        {foil_ok} images in {foil_s:.2f} s = {foil_rate:.1f} images/s")
    print(f"ratio foil/img2dataset: {foil_rate / i2d_rate:.2f}")
    cold = foil_ok / (foil_s + ray_init)
    print(f"foil counting ray.init ({ray_init:.2f} s): {cold:.1f} images/s, ratio {cold / i2d_rate:.2f}")


if __name__ == "__main__":
    main()
