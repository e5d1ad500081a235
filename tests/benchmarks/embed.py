"""Embedding throughput: foil's embed stage against `clip-retrieval inference`, same images, same model.

Both embed the same N emoji PNGs (with their captions) with the same open_clip model and
weights (a checkpoint file both load), images and texts, on CPU, in one run:

- clip-retrieval: `clip_inference` over webdataset tars of png + txt (what img2dataset writes;
  its `files` reader in 2.45.0 keys texts and images by full file name, so the two never pair
  up), one process with its own preprocessing workers;
- foil: the `embed` stage over `raw` parquet shards, Ray actor pool (one model per actor).

Prints images/s for both and the ratio, with and without Ray's start-up. The model defaults to
`foil-tiny-vit`, where reading and preprocessing weigh most; `--model foil-effnet-lite0-minilm`
measures the real two-tower, where the model itself dominates.

    .venv/bin/python tests/benchmarks/embed.py [--images 8000] [--model foil-tiny-vit]
"""

from __future__ import annotations

import argparse
import io
import shutil
import tarfile
import tempfile
import time
from pathlib import Path


def write_inputs(sample: Path, items, n: int, tars: Path, per: int = 1000):
    """`n` emoji PNGs with their captions, as clip-retrieval reads them (webdataset tars of `per`
    pairs each, written into `tars`) and as foil's `raw` table holds them (returned, unwritten)."""
    import pyarrow as pa

    from pipeline.core import schema as S

    tars.mkdir()
    rows = {name: [] for name in S.RAW_SCHEMA.names}
    members: list[tuple[str, bytes]] = []
    for i in range(n):
        it = items[i % len(items)]
        blob = (sample / "img/google/64" / it.image).read_bytes()
        members += [(f"{i:06d}.png", blob), (f"{i:06d}.txt", it.caption.encode())]
        url = f"http://h/{i}.png"
        values = {S.SAMPLE_ID: S.sample_id(url, it.caption), S.URL: url, S.CAPTION: it.caption, S.STATUS: "success", S.IMAGE: blob}
        for name in S.RAW_SCHEMA.names:
            rows[name].append(values.get(name))
    for s in range(0, len(members), 2 * per):
        with tarfile.open(tars / f"{s // (2 * per):05d}.tar", "w") as tar:
            for name, data in members[s : s + 2 * per]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return pa.table(rows, schema=S.RAW_SCHEMA)


def main() -> None:
    from flows.environment import apply_defaults

    apply_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--model", default="foil-tiny-vit")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    if args.images < 2000:  # tars of 1000; clip-retrieval's reader wants one per preprocessing worker (2)
        parser.error("--images: at least 2000")

    import numpy as np
    import pyarrow as pa
    import torch

    from pipeline.core import schema as S
    from pipeline.stages import stage_class
    from pipeline.core.runners import RayRunner, ensure_ray
    from pipeline.demo.sample import emoji_items, fetch_emoji_sample
    from pipeline.core.store import Dataset, shard_name
    from pipeline.models import factory as M

    sample = fetch_emoji_sample()
    items = emoji_items(sample)
    work = Path(tempfile.mkdtemp(prefix="foil-bench-embed-"))
    try:
        torch.manual_seed(0)
        ckpt = work / "model.pt"
        M.save_open_clip_checkpoint(M.create_model(args.model), ckpt, 0, args.model)

        tars = work / "tars"
        ds = Dataset(work / "ds")
        per = 1000
        table = write_inputs(sample, items, args.images, tars, per)
        for s in range(0, table.num_rows, per):
            ds.table(S.RAW).write_shard(shard_name(s // per), table.slice(s, per))
        ds.table(S.RAW).write_manifest("crawl", {}, [S.URLS])

        # clip-retrieval, in this process (so foil's model configs are registered for open_clip).
        from clip_retrieval.clip_inference.main import main as clip_inference

        M.register_foil_configs()
        start = time.perf_counter()
        clip_inference(
            input_dataset=f"{tars}/{{00000..{len(list(tars.glob('*.tar'))) - 1:05d}}}.tar", output_folder=str(work / "cr_out"),
            input_format="webdataset", wds_image_key="png", wds_caption_key="txt",
            clip_model=f"open_clip:{args.model}/{ckpt}", use_jit=False, batch_size=args.batch_size,
            num_prepro_workers=2, enable_text=True, enable_image=True, enable_metadata=False,
            write_batch_size=10**6, distribution_strategy="sequential", output_partition_count=1,
        )
        cr_seconds = time.perf_counter() - start
        cr_rows = sum(np.load(p).shape[0] for p in (work / "cr_out" / "img_emb").glob("*.npy"))

        ray_start = time.perf_counter()
        ensure_ray(None)
        ray_seconds = time.perf_counter() - ray_start
        start = time.perf_counter()
        RayRunner(progress=False).run(stage_class("embed"), {"model": args.model, "pretrained": str(ckpt), "batch_size": args.batch_size}, ds, S.RAW, S.EMBEDDINGS)
        foil_seconds = time.perf_counter() - start
        foil_rows = ds.table(S.EMBEDDINGS).read(columns=[S.SAMPLE_ID]).num_rows

        assert cr_rows == foil_rows == args.images, (cr_rows, foil_rows)
        cr_rate, foil_rate, cold = cr_rows / cr_seconds, foil_rows / foil_seconds, foil_rows / (foil_seconds + ray_seconds)
        print(f"\n{args.images} images + captions, model {args.model}, batch {args.batch_size}, CPU")
        print(f"clip-retrieval inference: {cr_rate:8.1f} images/s ({cr_seconds:.1f} s)")
        print(f"foil embed (Ray actors):  {foil_rate:8.1f} images/s ({foil_seconds:.1f} s)   ratio {foil_rate / cr_rate:.2f}")
        print(f"foil counting ray.init ({ray_seconds:.1f} s): {cold:8.1f} images/s   ratio {cold / cr_rate:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
