"""Whole commands, side by side: `foil crawl`, `foil train` and `foil embed` against the command a
user would otherwise pick (`img2dataset`, `open_clip_train.main`, `clip-retrieval inference`).

Every figure is a whole process, start-up included, as a user sees it: wall time from spawn to
exit, and peak RSS (the largest single process of the command's tree, RUSAGE_CHILDREN of a
measuring child). Runs alternate, foil then peer then foil (ABAB), so both see the same load on
a shared machine; medians and min-max over `--repeats`, and the ratio foil/peer of the medians.
Targets: foil/peer <= 1.0 at the small size, <= 0.8 at the large one.

- crawl: the same url list (the emoji sample, repeated under distinct query strings) from one
  local ImageServer, the same settings (2 processes x 32 threads, 64 px, border, png), 2,000 or
  20,000 urls; foil's recipe allows exactly that server.
- train: foil-tiny-vit, batch 64, 150 or 1,000 steps, fp32 on CPU, no hard negatives (open_clip
  has none), a checkpoint at the end for both; foil on one Ray Train worker over a `train` table
  of real emoji PNGs, open_clip_train on its synthetic dataset with one loader worker.
- embed: the same 2,000 (or 8,000) emoji PNGs and captions, the same checkpoint of foil-tiny-vit,
  images and texts; clip-retrieval over webdataset tars, foil over `raw` parquet shards.

open_clip_train and clip-retrieval learn foil's architecture through a two-line wrapper that
registers foil's model configs with open_clip (they import open_clip anyway); that is all the
peers run besides their own code. `--foil-repo` runs foil from another checkout (e.g. a copy of
the tree before a change) with this venv, for before/after figures.

    .venv/bin/python tests/benchmarks/commands.py [--sizes small|large|all] [--repeats 3] [--pairs crawl train embed]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PROCESSES, THREADS = 2, 32
RESIZE = {"image_size": 64, "resize_mode": "border", "encode_format": "png", "encode_quality": 6, "timeout": 10}
SIZES = {
    "crawl": {"small": 2_000, "large": 20_000},
    "train": {"small": 150, "large": 1_000},
    "embed": {"small": 2_000, "large": 8_000},
}
BATCH = 64
MODEL = "foil-tiny-vit"

# The peers learn foil's architecture name; nothing else of foil runs in their process.
REGISTER = "from pipeline.models.factory import register_foil_configs; register_foil_configs(); "
OPEN_CLIP_TRAIN = REGISTER + "import sys; from open_clip_train.main import main; main(sys.argv[1:])"
CLIP_INFERENCE = REGISTER + "import fire; from clip_retrieval.clip_inference.main import main; fire.Fire(main)"

# Runs a command in a child, so RUSAGE_CHILDREN there is that command's own peak RSS.
_MEASURE = (
    "import json, resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[2:], cwd=sys.argv[1], capture_output=True, text=True)\n"
    "out = {'seconds': time.perf_counter() - start, 'rc': p.returncode, 'tail': (p.stdout + p.stderr)[-3000:]}\n"
    "out['peak_mb'] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
    "print(json.dumps(out))\n"
)


def measure(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(cwd), *cmd], env=env, capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["rc"] != 0:  # a failed run is a figure too (e.g. a start-up that timed out under load)
        print(f"  FAILED: {' '.join(cmd[:4])} ... exited {out['rc']}:\n{out['tail'][-800:]}", flush=True)
    return out


def _env(foil_repo: Path) -> dict[str, str]:
    from flows.environment import DEFAULTS

    env = {**DEFAULTS, **os.environ, "PYTHONPATH": str(foil_repo)}
    for key in ("RAY_ADDRESS", "PREFECT_API_URL"):  # a user's fresh shell: nothing running to attach to
        env.pop(key, None)
    return env


def foil_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def _recipe(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


# -- crawl ------------------------------------------------------------------------------------
def url_list(base: str, items, n: int, path: Path) -> Path:
    """n urls over the sample, the same images again under distinct query strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.demo.sample import IMAGE_SUBDIR

    rows = [items[i % len(items)] for i in range(n)]
    urls = [f"{base}/{IMAGE_SUBDIR}/{it.image}?copy={i // len(items)}" for i, it in enumerate(rows)]
    pq.write_table(pa.table({"url": urls, "caption": [it.caption for it in rows]}), path)
    return path


def crawl_pair(n: int, work: Path, server, items):
    urls = url_list(server.url, items, n, work / f"urls-{n}.parquet")
    shard_rows = max(1, n // PROCESSES // 2)
    recipe = _recipe(work / "crawl.yaml", {
        "runner": {"kind": "ray"},
        "crawl": {"shard_rows": shard_rows, "params": {**RESIZE, "thread_count": THREADS}},
    })
    count = iter(range(10**6))

    def foil() -> list[str]:
        return foil_cmd("crawl", "--dataset", str(work / f"foil-crawl-{n}-{next(count)}"), "--urls", str(urls),
                        "--recipe", str(recipe), "--allow-address", server.address)

    def peer() -> list[str]:
        return [str(VENV_BIN / "img2dataset"), f"--url_list={urls}", "--input_format=parquet", "--url_col=url",
                "--caption_col=caption", "--output_format=parquet", f"--output_folder={work / f'i2d-{n}-{next(count)}'}",
                f"--processes_count={PROCESSES}", f"--thread_count={THREADS}", f"--number_sample_per_shard={shard_rows}",
                "--timeout=10", "--extract_exif=False", "--compute_hash=sha256", "--distributor=multiprocessing",
                f"--image_size={RESIZE['image_size']}", f"--resize_mode={RESIZE['resize_mode']}",
                f"--encode_format={RESIZE['encode_format']}", f"--encode_quality={RESIZE['encode_quality']}"]

    return foil, peer


# -- train ------------------------------------------------------------------------------------
def _train_table(root: Path, sample: Path, items, rows: int) -> None:
    import pyarrow as pa

    from pipeline.core import schema as S
    from pipeline.core.store import Dataset, shard_name

    ds = Dataset(root)
    per = 1000
    names = []
    for s, start in enumerate(range(0, rows, per)):
        chunk = [items[i % len(items)] for i in range(start, min(rows, start + per))]
        values = {
            S.SAMPLE_ID: [S.sample_id(f"http://h/{start + i}", it.caption) for i, it in enumerate(chunk)],
            S.CAPTION: [it.caption for it in chunk],
            S.SPLIT: ["train"] * len(chunk),
            S.IMAGE: [(sample / "img/google/64" / it.image).read_bytes() for it in chunk],
        }
        table = pa.table({c: values.get(c, [None] * len(chunk)) for c in S.TRAIN_SCHEMA.names}, schema=S.TRAIN_SCHEMA)
        names.append(shard_name(s))
        ds.table(S.TRAIN).write_shard(names[-1], table, stats={"rows_out": len(chunk)})
    ds.table(S.TRAIN).write_manifest("export", {}, ["export_rows"], expected_shards=names)


def train_pair(steps: int, work: Path, sample: Path, items):
    data = work / "train-ds"
    if not data.exists():
        _train_table(data, sample, items, 4000)
    recipe = _recipe(work / f"train-{steps}.yaml", {"train": {
        "model": MODEL, "steps": steps, "batch_size": BATCH, "lr": 5e-4, "warmup_steps": 2, "use_negatives": False,
        "checkpoint_every": steps, "log_every": 10, "workers": 1,
    }})
    count = iter(range(10**6))

    def foil() -> list[str]:
        return foil_cmd("train", "--dataset", str(data), "--config", str(recipe), "--out", str(work / f"ckpt-{steps}-{next(count)}"), "--workers", "1")

    def peer() -> list[str]:
        return [sys.executable, "-c", OPEN_CLIP_TRAIN, "--dataset-type", "synthetic", "--train-num-samples", str(steps * BATCH),
                "--batch-size", str(BATCH), "--epochs", "1", "--workers", "1", "--model", MODEL, "--lr", "5e-4", "--warmup", "2",
                "--precision", "fp32", "--log-every-n-steps", "10", "--save-frequency", "1", "--logs", str(work / f"oc-{steps}-{next(count)}"),
                "--name", "bench", "--report-to", "", "--seed", "0"]

    return foil, peer


# -- embed ------------------------------------------------------------------------------------
def embed_pair(n: int, work: Path, sample: Path, items):
    import torch

    from pipeline.core import schema as S
    from pipeline.core.store import Dataset, shard_name
    from pipeline.models import factory as M
    from embed import write_inputs  # tests/benchmarks/embed.py, next to this script (sys.path[0])

    torch.manual_seed(0)
    ckpt = work / "embed-model.pt"
    M.save_open_clip_checkpoint(M.create_model(MODEL), ckpt, 0, MODEL)
    tars = work / f"tars-{n}"
    raw = work / f"embed-raw-{n}"
    per = 1000  # clip-retrieval's reader wants at least one tar per preprocessing worker
    table = write_inputs(sample, items, n, tars, per)
    names = [shard_name(s // per) for s in range(0, n, per)]
    for s, name in zip(range(0, n, per), names):
        Dataset(raw).table(S.RAW).write_shard(name, table.slice(s, per), stats={"rows_out": min(per, n - s)})
    Dataset(raw).table(S.RAW).write_manifest("crawl", {}, [S.URLS], expected_shards=names)
    recipe = _recipe(work / "embed.yaml", {"runner": {"kind": "ray"}, "embed": {"model": MODEL, "pretrained": str(ckpt), "batch_size": 256}})
    count = iter(range(10**6))

    def foil() -> list[str]:
        copy = work / f"embed-ds-{n}-{next(count)}"
        shutil.copytree(raw, copy)
        return foil_cmd("embed", "--dataset", str(copy), "--recipe", str(recipe))

    def peer() -> list[str]:
        last = len(list(tars.glob("*.tar"))) - 1
        return [sys.executable, "-c", CLIP_INFERENCE, f"--input_dataset={tars}/{{00000..{last:05d}}}.tar",
                f"--output_folder={work / f'cr-{n}-{next(count)}'}", "--input_format=webdataset", "--wds_image_key=png",
                "--wds_caption_key=txt", f"--clip_model=open_clip:{MODEL}/{ckpt}", "--use_jit=False", "--batch_size=256",
                "--num_prepro_workers=2", "--enable_text=True", "--enable_image=True", "--enable_metadata=False",
                "--write_batch_size=1000000", "--distribution_strategy=sequential", "--output_partition_count=1"]

    return foil, peer


def _spread(values: list[float], unit: str) -> str:
    return f"median {statistics.median(values):7.1f} {unit} (min {min(values):.1f}, max {max(values):.1f})"


def run_pair(label: str, foil, peer, repeats: int, foil_repo: Path) -> dict:
    env_foil, env_peer = _env(foil_repo), _env(REPO)
    fig = {"foil": [], "peer": []}
    for r in range(repeats):  # ABAB: both see the same load
        fig["foil"].append(measure(foil(), foil_repo, env_foil))
        fig["peer"].append(measure(peer(), REPO, env_peer))
        print(f"  {label} run {r + 1}: foil {fig['foil'][-1]['seconds']:.1f} s, peer {fig['peer'][-1]['seconds']:.1f} s", flush=True)
    ok = {k: [m for m in v if m["rc"] == 0] for k, v in fig.items()}
    failed = {k: len(v) - len(ok[k]) for k, v in fig.items()}
    secs = {k: [m["seconds"] for m in v] for k, v in ok.items()}
    mem = {k: [m["peak_mb"] for m in v] for k, v in ok.items()}
    ratio = statistics.median(secs["foil"]) / statistics.median(secs["peer"]) if secs["foil"] and secs["peer"] else float("nan")
    lines = [label]
    for k in ("foil", "peer"):
        shown = f"{_spread(secs[k], 's')}, peak {_spread(mem[k], 'MB')}" if secs[k] else "no successful run"
        lines.append(f"  {k}  {shown}" + (f"  ({failed[k]} of {repeats} runs FAILED)" if failed[k] else ""))
    lines.append(f"  foil/peer wall (medians): {ratio:.2f}")
    print("\n".join(lines), flush=True)
    return {"label": label, "seconds": secs, "peak_mb": mem, "ratio": ratio, "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", choices=("small", "large", "all"), default="small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pairs", nargs="+", choices=tuple(SIZES), default=list(SIZES))
    parser.add_argument("--foil-repo", type=Path, default=REPO, help="the foil checkout to run (default: this one)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    sizes = ("small", "large") if args.sizes == "all" else (args.sizes,)

    from pipeline.demo.sample import ImageServer, emoji_items, fetch_emoji_sample

    sample = fetch_emoji_sample()
    items = emoji_items(sample)
    work = Path(tempfile.mkdtemp(prefix="foil-bench-commands-"))
    results = []
    print(f"foil from {args.foil_repo}; {args.repeats} runs each, foil and peer alternating; CPU, {os.cpu_count()} cores")
    try:
        with ImageServer(sample) as server:
            for size in sizes:
                for pair in args.pairs:
                    n = SIZES[pair][size]
                    if pair == "crawl":
                        foil, peer = crawl_pair(n, work, server, items)
                        label = f"crawl {n} urls: foil crawl vs img2dataset ({PROCESSES} x {THREADS} threads)"
                    elif pair == "train":
                        foil, peer = train_pair(n, work, sample, items)
                        label = f"train {MODEL} {n} steps, batch {BATCH}: foil train (1 worker) vs open_clip_train.main"
                    else:
                        foil, peer = embed_pair(n, work, sample, items)
                        label = f"embed {n} images + captions, {MODEL}: foil embed vs clip-retrieval inference"
                    results.append({"size": size, **run_pair(label, foil, peer, args.repeats, args.foil_repo)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\nsummary (foil/peer wall, medians; target <= 1.0 small, <= 0.8 large):")
    for r in results:
        target = 1.0 if r["size"] == "small" else 0.8
        print(f"  {r['ratio']:.2f}  {'met' if r['ratio'] <= target else 'NOT met'}  {r['label']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from flows.environment import apply_defaults

    apply_defaults()
    main()
