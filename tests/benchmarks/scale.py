"""Scale: do foil's reads stay linear in the dataset? Synthetic tables of 10k, 100k and 1M rows.

Tables `raw` (metadata plus a 1 KB image blob per row), `scores` and `neg_text` are written
through foil's own store in 10k-row shards (no crawling, no model), then each figure is taken in
a fresh process, so peak memory is that command's own:

- `foil sql` on `curated` (a count) and on `funnel`: the whole command, start-up included, warm
  (run once before timing);
- the re-threshold: `foil curate`'s work (`steps.curate`, the thresholds set and the views and
  curation table rebuilt; no stage recomputes anything);
- the stage input read: what a view-reading stage (negatives) reads over all shards in one run
  (`Catalog.stage_view` over `curated`, then every shard's file read);
- the export read: what the export stage reads for every shard (its staged view rows plus the
  image column of its own `raw` shard), bytes read from disk per shard and seconds in all.

Prints one line per size, then the growth exponent from 100k to 1M for each figure
(log(t_1M / t_100k) / log(10); 1.0 is linear). Targets: every exponent <= 1.1; `foil sql` on 1M
rows under 1 s warm and under 500 MB.

    .venv/bin/python tests/benchmarks/scale.py [--sizes 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOIL = str(Path(sys.executable).with_name("foil"))
SHARD_ROWS = 10_000
IMAGE_BYTES = 1024


def build(root: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa

    from pipeline.core import schema as S
    from pipeline.core.catalog import Catalog
    from pipeline.core.store import Dataset, shard_name

    ds = Dataset(root)
    rng = np.random.default_rng(0)
    words = np.array(["red", "blue", "apple", "heart", "cat", "dog", "on", "a", "the", "tree", "small", "big"])
    names = []
    for s, start in enumerate(range(0, rows, SHARD_ROWS)):
        n = min(SHARD_ROWS, rows - start)
        idx = np.arange(start, start + n)
        urls = [f"http://h{i % 97}.example/{i}.png" for i in idx]
        captions = [" ".join(words[rng.integers(0, len(words), 1 + i % 6)]) for i in idx]
        ids = [S.sample_id(u, c) for u, c in zip(urls, captions)]
        sha = [f"{i % (rows - rows // 50):064x}" for i in idx]  # 2% exact duplicates
        blobs = [rng.bytes(IMAGE_BYTES) for _ in idx]
        width = (16 + (idx % 200)).astype("int32")
        raw = pa.table(
            {
                S.SAMPLE_ID: ids, S.URL: urls, S.CAPTION: captions, S.STATUS: ["success" if i % 20 else "error" for i in idx],
                S.ERROR: [None] * n, S.ERROR_KIND: [None] * n, S.WIDTH: width, S.HEIGHT: width, S.ORIGINAL_WIDTH: width,
                S.ORIGINAL_HEIGHT: width, S.SHA256: sha, S.IMAGE: blobs,
            },
            schema=S.RAW_SCHEMA,
        )
        scores = pa.table(
            {
                S.SAMPLE_ID: ids, S.WIDTH: width, S.HEIGHT: width, S.ASPECT_RATIO: np.ones(n, "float32"),
                S.CAPTION_CHARS: [len(c) for c in captions], S.CAPTION_WORDS: [c.count(" ") + 1 for c in captions],
                S.IMAGE_BYTES: np.full(n, IMAGE_BYTES), S.SHA256: sha, S.PHASH: [f"{i:016x}" for i in idx],
                S.COLOR_THUMB: ["00" * 48] * n, S.DECODE_ERROR: [None] * n, S.LANGUAGE: ["en"] * n,
                S.LANGUAGE_SCORE: np.ones(n, "float32"), S.CAPTION_FLAG: [None] * n,
            },
            schema=S.SCORES_SCHEMA,
        )
        name = shard_name(s)
        names.append(name)
        ds.table(S.RAW).write_shard(name, raw, stats={"rows_out": n})
        ds.table(S.SCORES).write_shard(name, scores, stats={"rows_out": n})
    ds.table(S.RAW).write_manifest("crawl", {}, [S.URLS], expected_shards=names)
    ds.table(S.SCORES).write_manifest("score", {}, [S.RAW], expected_shards=names)
    Catalog(ds).set_thresholds({"min_width": 32, "min_height": 32})
    Catalog(ds).refresh()


# Each measurement runs in a child process; it prints one JSON line.
PROBES = {
    "rethreshold": """
import sys, time
from pipeline import steps
from pipeline.core.store import Dataset
start = time.perf_counter()
steps.curate(Dataset(sys.argv[1]), {"min_width": 40, "min_height": 40})
seconds = time.perf_counter() - start
steps.curate(Dataset(sys.argv[1]), {"min_width": 32, "min_height": 32})
print({"seconds": seconds})
""",
    "stage_input": """
import sys, time, shutil
import pyarrow.parquet as pq
from pipeline.core.catalog import Catalog
from pipeline.core.store import Dataset
ds = Dataset(sys.argv[1])
shards = sorted(ds.table("raw").finished_shards())
folder = sys.argv[1] + "/_bench_input"
start = time.perf_counter()
Catalog(ds).stage_view("curated", ["sample_id", "caption"], shards, folder)
rows = sum(pq.read_table(f"{folder}/{s}.parquet").num_rows for s in shards)
seconds = time.perf_counter() - start
shutil.rmtree(folder)
print({"seconds": seconds, "rows": rows})
""",
    "export_read": """
import sys, time, shutil
import pyarrow.parquet as pq
from pipeline.core.catalog import Catalog
from pipeline.core.store import Dataset
def read_bytes():
    return int(next(l for l in open("/proc/self/io") if l.startswith("rchar")).split()[1])
ds = Dataset(sys.argv[1])
shards = sorted(ds.table("raw").finished_shards())
folder = sys.argv[1] + "/_bench_export"
start, before = time.perf_counter(), read_bytes()
Catalog(ds).stage_view("export_rows", ["sample_id", "caption", "negative_caption", "negative_kind"], shards, folder)
per_shard = []
for s in shards:
    b = read_bytes()
    rows = pq.read_table(f"{folder}/{s}.parquet")
    images = ds.table("raw").read_shard(s, columns=["sample_id", "image"])
    per_shard.append(read_bytes() - b)
seconds, total = time.perf_counter() - start, read_bytes() - before
shutil.rmtree(folder)
print({"seconds": seconds, "bytes_total": total, "bytes_per_shard": max(per_shard)})
""",
}


# Runs a command in a child, so RUSAGE_CHILDREN there is that command's own peak RSS. The
# figures: wall time (start-up included) and peak memory, plus whatever dict literal the command
# printed last when asked (a probe's own inner timing replaces the wall time).
_MEASURE = (
    "import ast, json, resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[2:], capture_output=True, text=True)\n"
    "out = {'seconds': time.perf_counter() - start}\n"
    "assert p.returncode == 0, p.stderr[-2000:]\n"
    "if sys.argv[1] == 'reported':\n"
    "    out.update(ast.literal_eval(p.stdout.strip().splitlines()[-1]))\n"
    "out['peak_mb'] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
    "print(json.dumps(out))\n"
)


def measure_alone(args: list[str], reported: bool = False) -> dict:
    mode = "reported" if reported else "wall"
    proc = subprocess.run([sys.executable, "-c", _MEASURE, mode, *args], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def probe_alone(name: str, root: Path) -> dict:
    return measure_alone([sys.executable, "-c", PROBES[name], str(root)], reported=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="foil-bench-scale-"))
    results: dict[int, dict[str, dict]] = {}
    try:
        for rows in args.sizes:
            root = work / f"ds-{rows}"
            start = time.perf_counter()
            build(root, rows)
            built = time.perf_counter() - start
            fig: dict[str, dict] = {}
            for query, key in (("select count(*) from curated", "sql_curated"), ("select * from funnel", "sql_funnel")):
                cmd = [FOIL, "sql", "--dataset", str(root), query]
                measure_alone(cmd)  # warm the page cache and the catalog file
                fig[key] = min((measure_alone(cmd) for _ in range(3)), key=lambda r: r["seconds"])
            for name in PROBES:
                fig[name] = probe_alone(name, root)
            results[rows] = fig
            print(
                f"{rows:>9,} rows (built in {built:.0f} s): "
                f"foil sql curated {fig['sql_curated']['seconds']:.2f} s / {fig['sql_curated']['peak_mb']:.0f} MB, "
                f"funnel {fig['sql_funnel']['seconds']:.2f} s / {fig['sql_funnel']['peak_mb']:.0f} MB | "
                f"re-threshold {fig['rethreshold']['seconds']:.2f} s / {fig['rethreshold']['peak_mb']:.0f} MB | "
                f"stage input read {fig['stage_input']['seconds']:.2f} s / {fig['stage_input']['peak_mb']:.0f} MB | "
                f"export read {fig['export_read']['seconds']:.2f} s, {fig['export_read']['bytes_per_shard'] / 2**20:.1f} MB per shard, "
                f"{fig['export_read']['bytes_total'] / 2**20:.0f} MB in all / {fig['export_read']['peak_mb']:.0f} MB peak",
                flush=True,
            )
            shutil.rmtree(root)
        sizes = sorted(results)
        if len(sizes) >= 2:
            a, b = sizes[-2], sizes[-1]
            scale = math.log(b / a)
            print(f"growth exponents {a:,} -> {b:,} rows (1.0 = linear; target <= 1.1):")
            for key in ("sql_curated", "sql_funnel", "rethreshold", "stage_input", "export_read"):
                print(f"  {key:12s} time {math.log(results[b][key]['seconds'] / results[a][key]['seconds']) / scale:.2f}")
            print(f"  export bytes read in all: {math.log(results[b]['export_read']['bytes_total'] / results[a]['export_read']['bytes_total']) / scale:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from flows.environment import apply_defaults

    apply_defaults()
    main()
