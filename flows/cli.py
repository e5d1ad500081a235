"""The `foil` command line: parse arguments, run a flow, print what happened.

Bad input (a flag, a recipe field, a query that would write) ends with one line naming what is
wrong and exit code 2, never a traceback. Heavy imports (torch, Ray, Prefect) happen only in the
subcommands that need them, so `foil sql` and `--help` answer at once.
"""

from __future__ import annotations

import argparse
import csv
import decimal
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from flows.environment import apply_defaults

apply_defaults()

EXIT_USAGE = 2
EXIT_FAILED = 1
DEMO_PORT = 8741


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_dataset(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="dataset folder (local path or fsspec URL)")


def _add_recipe(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="recipe YAML or a built-in recipe name (default: the built-in `default` recipe, safe crawl settings)")


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace this stage's output instead of resuming it")


def _add_tracking(p: argparse.ArgumentParser, ray: bool = True) -> None:
    p.add_argument("--prefect", action="store_true", help="run as a tracked Prefect flow (the default when PREFECT_API_URL is set)")
    if ray:
        p.add_argument("--ray-address", help="attach to this running Ray cluster (default: $RAY_ADDRESS, else a running local "
                                              "`ray start --head`, else in-process or a new embedded cluster)")


def _steps(args: argparse.Namespace) -> dict[str, Any]:
    """What runs a stage: its Prefect flow when tracking is asked for (`--prefect`, or a Prefect
    server configured with PREFECT_API_URL), else the same step called plainly, which needs no
    Prefect import and no temporary Prefect server. Both take the same arguments."""
    if getattr(args, "prefect", False) or os.environ.get("PREFECT_API_URL"):
        from flows.pipeline_flows import FLOWS

        return FLOWS
    from flows.commands import COMMANDS

    return COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="foil", description="foil: a data engine for contrastive vision-language models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole loop on the emoji sample served from 127.0.0.1")
    p.add_argument("--out", default="foil-demo", help="dataset folder to create (default: ./foil-demo)")
    p.add_argument("--sample-dir", help="an unpacked emoji-datasource-google package (default: fetched once with npm)")
    p.add_argument("--limit", type=int, help="use only the first N emoji")
    p.add_argument("--port", type=int, default=DEMO_PORT, help=f"port of the local image server (default {DEMO_PORT}; a fixed port keeps sample ids stable across reruns)")
    p.add_argument("--gpu", action="store_true", help="train on GPU")
    _add_recipe(p)

    p = sub.add_parser("fetch-sample", help="download the demo's emoji sample from the npm registry into the cache")
    p.add_argument("--cache-dir", help="cache folder (default ~/.cache/foil)")

    p = sub.add_parser("heldout-pairs", help="minimal pairs in a held-out drawing style (Twemoji, fetched once with npm) for `foil eval --pairs`")
    p.add_argument("--out", required=True, help="folder to write pairs.jsonl, concepts.jsonl, images/ and heldout.json into (replaced)")
    p.add_argument("--twemoji-dir", help="an unpacked emoji-datasource-twitter package (default: fetched into the cache)")
    p.add_argument("--min-pixel-difference", type=float, default=0.02, help="keep pairs whose images differ by more (mean |a-b|, 0..1)")

    p = sub.add_parser("sql", help="run a read-only SQL query on a dataset's catalog")
    _add_dataset(p)
    p.add_argument("query", help="SQL (SELECT, DESCRIBE, SHOW, EXPLAIN)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--max-rows", type=int, default=100, help="rows printed in table format (default 100)")

    p = sub.add_parser("crawl", help="download images for url lists into table `raw`")
    _add_dataset(p)
    p.add_argument("--urls", nargs="+", default=[], metavar="FILE",
                   help="url lists: parquet, csv, tsv or jsonl; on an existing dataset only urls not seen before are added and crawled")
    p.add_argument("--url-col", help="column holding the url (default: url, else LAION's URL)")
    p.add_argument("--caption-col", help="column holding the caption (default: caption, else LAION's TEXT or DataComp's text)")
    p.add_argument("--keep-columns", metavar="A,B", default="",
                   help="more columns of the lists to carry into raw (as one JSON object per row, column `extra`)")
    p.add_argument("--retry-failed", action="store_true",
                   help="re-fetch only the rows of the existing raw whose failure is transient (timeout, 5xx, 429), in place")
    p.add_argument("--allow-address", dest="allow_addresses", action="append", default=[], metavar="ADDRESS:PORT",
                   help="allow this one loopback/private address and port (a local test server); repeatable")
    p.add_argument("--allow-private-addresses", action="store_true", help="allow every loopback/private/link-local host (local testing only)")
    _add_recipe(p)
    _add_overwrite(p)
    _add_tracking(p)

    for name, text in (
        ("score", "rule scores and hashes into table `scores`"),
        ("embed", "image/text embeddings and CLIP scores into table `embeddings` (model from the recipe)"),
        ("negatives", "text hard negatives for curated captions into table `neg_text`"),
        ("export", "training shards into table `train` (parquet; --webdataset adds tars)"),
    ):
        p = sub.add_parser(name, help=text)
        _add_dataset(p)
        _add_recipe(p)
        _add_overwrite(p)
        _add_tracking(p)
        if name == "export":
            p.add_argument("--webdataset", action="store_true", help="also write webdataset tars to <dataset>/train_wds/<split>/")
            p.add_argument("--datacomp-uids", metavar="SUBSET.npy",
                           help="instead of training shards, write the curated rows' DataComp uids (sorted u8,u8 pairs) for DataComp's filtering track")

    p = sub.add_parser("neg-image", help="image hard negatives (mined real images; p2p/inpaint by diffusion) into table `neg_image`")
    _add_dataset(p)
    _add_recipe(p)
    _add_overwrite(p)

    p = sub.add_parser("imgdiff", help="Img-Diff pairs: generate (imgdiff.generate) and/or analyse imported pairs into table `imgdiff`")
    p.add_argument("--dataset", help="dataset folder (local path or fsspec URL)")
    _add_recipe(p)
    _add_overwrite(p)
    acts = p.add_subparsers(dest="action", required=False, parser_class=_Parser, metavar="ACTION")
    q = acts.add_parser("import", help="image pairs from a pairs file (JSON lines) into table `imgdiff_import`")
    _add_dataset(q)
    q.add_argument("--pairs", required=True, help="JSON lines: image_a, image_b, caption_a, caption_b (kind optional)")
    q.add_argument("--images", required=True, help="folder the pairs' image paths are relative to")
    _add_overwrite(q)
    q = acts.add_parser("export-pairs", help="the held-out kept pairs of table `imgdiff` as a pairs file for `foil eval --pairs`")
    _add_dataset(q)
    q.add_argument("--out", required=True, help="pairs file to write (JSON lines)")
    q.add_argument("--images-out", required=True, help="folder for the pairs' PNG images (paths in --out are relative to it)")
    q.add_argument("--eval-percent", type=int, help="share of pairs held out, by pair id (default: the recipe's export.eval_percent)")
    _add_recipe(q)

    p = sub.add_parser("dedup", help="exact, near (pHash) and semantic (embeddings) duplicates into table `duplicates`")
    _add_dataset(p)
    _add_recipe(p)
    _add_overwrite(p)
    _add_tracking(p, ray=False)

    p = sub.add_parser("index", help="kNN index of the embeddings: clip-retrieval's layout, indexed by autofaiss")
    _add_dataset(p)
    p.add_argument("--all", action="store_true", help="index every embedded row, not only the curated ones")
    p.add_argument("--max-index-memory", default="4G", help="autofaiss's max_index_memory_usage (default 4G)")

    p = sub.add_parser("knn", help="nearest rows to a text (or an image) in the kNN index, with their captions")
    _add_dataset(p)
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help="query text")
    query.add_argument("--image", help="query image file")
    p.add_argument("-k", type=int, default=10, help="neighbours to return (default 10)")
    p.add_argument("--against", choices=("image", "text"), default="image", help="search the image index (default) or the text index")
    p.add_argument("--format", choices=("table", "json"), default="table")

    p = sub.add_parser("sugarcrepe", help="SugarCrepe JSON files: export a dataset's negatives, or import SugarCrepe with your COCO images")
    sc = p.add_subparsers(dest="action", required=True, parser_class=_Parser, metavar="ACTION")
    q = sc.add_parser("export", help="one <kind>.json per kind plus images/, for `foil eval --sugarcrepe`")
    _add_dataset(q)
    q.add_argument("--out", required=True, help="folder to write")
    q.add_argument("--kinds", nargs="+", help="only these kinds (default: all)")
    q = sc.add_parser("import", help="SugarCrepe files and their images into a new dataset (tables raw, neg_text)")
    _add_dataset(q)
    q.add_argument("--images", required=True, help="folder the files' `filename`s are relative to (COCO val2017 for SugarCrepe)")
    q.add_argument("files", nargs="+", metavar="JSON", help="SugarCrepe files (replace_att.json, ...)")

    p = sub.add_parser("curate", help="apply the recipe's thresholds: recreate the `curated` and `funnel` views")
    _add_dataset(p)
    _add_recipe(p)
    _add_tracking(p, ray=False)

    p = sub.add_parser("train", help="contrastive training as a Ray Train job")
    _add_dataset(p)
    p.add_argument("--config", dest="recipe", help="recipe YAML whose `train` section is used")
    p.add_argument("--out", required=True, help="folder for checkpoints")
    p.add_argument("--workers", type=int, help="Ray Train workers (default: the recipe's train.workers)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker, bf16 autocast")
    _add_tracking(p)

    p = sub.add_parser("train-heads", help="train only the projection heads of a two-tower model with frozen, pretrained towers (a CLIP-score filter model)")
    _add_dataset(p)
    p.add_argument("--out", required=True, help="checkpoint file to write (open_clip format)")
    p.add_argument("--model", default="foil-effnet-lite0-minilm", help="model with timm + Hugging Face towers (default foil-effnet-lite0-minilm)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--split", default="train", help="rows of table `train` to learn from (default: train)")

    p = sub.add_parser("submit", help="submit training to a running Ray cluster as a Ray Job; streams its logs")
    p.add_argument("--address", required=True, help="the cluster's job server, e.g. http://HEAD:8265")
    _add_dataset(p)
    p.add_argument("--config", dest="recipe", help="recipe YAML whose `train` section is used (a path on the cluster)")
    p.add_argument("--out", required=True, help="folder for checkpoints (a path on the cluster)")
    p.add_argument("--workers", type=int, help="Ray Train workers")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker, bf16 autocast")
    p.add_argument("--python", default="python", help="the interpreter on the cluster that has foil installed (default: python)")
    p.add_argument("--no-wait", action="store_true", help="return once the job is submitted")

    p = sub.add_parser("eval", help="evaluate a checkpoint: a dataset's eval split and/or benchmark files")
    p.add_argument("--dataset", help="score its eval split (retrieval R@1/5/10, hard negatives) and record all metrics there")
    p.add_argument("--checkpoint", required=True, help="open_clip state dict (open_clip_model.pt)")
    p.add_argument("--model", default="foil-tiny-vit", help="architecture name (default foil-tiny-vit)")
    p.add_argument("--run-id", default="eval", help="name under which metrics are recorded")
    p.add_argument("--sugarcrepe", nargs="+", default=[], metavar="JSON", help="SugarCrepe-format files, one kind each")
    p.add_argument("--pairs", nargs="+", default=[], metavar="JSONL",
                   help="minimal-pair files (JSON lines: image_a, image_b, caption_a, caption_b, kind; or a JSON list of image_0/1, caption_0/1): "
                        "text, image and group scores and pair accuracy, per kind (see `foil heldout-pairs`)")
    p.add_argument("--retrieval", nargs="+", default=[], metavar="JSONL", help="concept files (JSON lines: image, caption): R@1/R@5 both ways")
    p.add_argument("--image-size", type=int, help="input size for --pairs/--retrieval images (default: the architecture's)")
    p.add_argument("--zeroshot", nargs="+", default=[], metavar="JSON", help="zero-shot sets: [{image, label}]")
    p.add_argument("--images", help="folder the benchmark files' image paths are relative to (default: the current folder; "
                                     "for --pairs/--retrieval, each file's own folder)")
    p.add_argument("--templates", nargs="+", help="zero-shot prompts with {} for the class name")
    _add_tracking(p, ray=False)

    p = sub.add_parser("report", help="one self-contained HTML page: funnel, histograms, sample grids, negatives, pairs, curves, eval")
    _add_dataset(p)
    p.add_argument("--out", help="HTML file to write (default: <dataset>/report.html)")

    p = sub.add_parser("blind", help="blind (text-only) accuracy per negative kind; --refine rejects what a text-only scorer solves")
    _add_dataset(p)
    _add_recipe(p)
    p.add_argument("--refine", action="store_true", help="run the refinement (recipe's negatives.blind) into table neg_blind first")
    p.add_argument("--max-accuracy", type=float, help="refinement target per kind (default: the recipe's, else 0.6)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    _add_overwrite(p)
    return parser


# -- output ----------------------------------------------------------------------------------
def _cell(value: Any, width: int = 60) -> str:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    text = "NULL" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _json_value(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, decimal.Decimal):  # DuckDB's sum() of integers is a HUGEINT/DECIMAL
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def format_rows(table: Any, fmt: str, max_rows: int = 100) -> str:
    rows = table.to_pylist()
    cols = table.column_names
    if fmt == "json":
        return json.dumps(rows, default=_json_value, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(cols)
        for r in rows:
            writer.writerow([_cell(r[c], 10**9) if isinstance(r[c], bytes) else r[c] for c in cols])
        return buf.getvalue().rstrip("\n")
    shown = [[_cell(r[c]) for c in cols] for r in rows[:max_rows]]
    widths = [max([len(c)] + [len(row[i]) for row in shown]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in shown]
    more = f" (showing {max_rows})" if len(rows) > max_rows else ""
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''}{more})")
    return "\n".join(lines)


def _print_report(report: Any) -> None:
    print(json.dumps(report, indent=2, default=str))


# -- commands --------------------------------------------------------------------------------
def cmd_sql(args: argparse.Namespace) -> int:
    from pipeline.core.catalog import Catalog
    from pipeline.core.store import Dataset

    table = Catalog(Dataset(args.dataset)).query(args.query)
    print(format_rows(table, args.format, args.max_rows))
    return 0


def cmd_fetch_sample(args: argparse.Namespace) -> int:
    from pipeline.demo.sample import fetch_emoji_sample

    path = fetch_emoji_sample(Path(args.cache_dir) if args.cache_dir else None)
    print(f"emoji sample ready in {path}")
    return 0


def cmd_heldout_pairs(args: argparse.Namespace) -> int:
    from pipeline.demo.heldout import build_heldout, fetch_twemoji

    package = Path(args.twemoji_dir) if args.twemoji_dir else fetch_twemoji()
    result = build_heldout(package, Path(args.out), args.min_pixel_difference, progress=lambda line: print(line, flush=True))
    _print_report({"out": str(result.out_dir), "pairs": result.pairs, "pairs_per_kind": result.kept,
                   "dropped": result.dropped, "concepts": result.concepts})
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.report import render_markdown
    from pipeline.demo.sample import ImageServer, emoji_items, fetch_emoji_sample, write_url_list
    from pipeline.imgdiff.emoji_pairs import write_emoji_pairs

    if args.limit is not None and args.limit <= 0:
        raise UsageError(f"--limit: must be positive, got {args.limit}")
    sample = Path(args.sample_dir) if args.sample_dir else fetch_emoji_sample()
    items = emoji_items(sample, args.limit)
    out = Path(args.out).resolve()
    from flows.pipeline_flows import end_to_end

    with ImageServer(sample, port=args.port) as server:
        urls = write_url_list(items, server.url, out / "input" / "urls.parquet")
        # real Img-Diff pairs: the sample's skin-tone and colour variants (at most --limit of them)
        pairs, pair_images = write_emoji_pairs(sample, out / "input" / "imgdiff_pairs.jsonl", args.limit)
        print(f"serving {len(items)} emoji from {server.url}; dataset: {out}", flush=True)
        # the demo's crawl may reach its own server and nothing else on loopback or private networks
        summary = end_to_end(
            str(out), [str(urls)], args.recipe or "demo", args.gpu, allow_addresses=[server.address], imgdiff_pairs=[str(pairs), str(pair_images)],
        )
    print(render_markdown(summary))
    print(f"dataset: {out}  (summary.md, summary.json, catalog.duckdb)")
    if summary.get("report"):
        print(f"report: {summary['report']}  (open it in a browser; it needs no network)")
    print(f'query it: foil sql --dataset {out} "select * from funnel"')
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    if args.command == "export" and args.datacomp_uids:  # a query and a file: no flow, no Prefect
        from pipeline.core.store import Dataset
        from pipeline.export.datacomp import write_datacomp_uids

        _print_report(write_datacomp_uids(Dataset(args.dataset), args.datacomp_uids).as_dict())
        return 0
    run = _steps(args)

    if args.command == "crawl":
        from flows.recipe import load_recipe
        from pipeline.crawl.urls import check_url_files

        recipe = load_recipe(args.recipe)
        if args.retry_failed and args.urls:
            raise UsageError("--retry-failed re-fetches rows of the existing raw table; give no --urls with it")
        if not args.retry_failed and not args.urls:
            raise UsageError("the following arguments are required: --urls (or --retry-failed)")
        if args.urls:
            check_url_files(args.urls, args.url_col or recipe.url_col, args.caption_col or recipe.caption_col, args.keep_columns)
        report = run["crawl"](
            args.dataset, args.urls, args.recipe, args.overwrite, url_col=args.url_col, caption_col=args.caption_col,
            allow_private_addresses=args.allow_private_addresses, allow_addresses=args.allow_addresses,
            keep_columns=args.keep_columns, retry_failed=args.retry_failed,
        )
        if args.retry_failed:
            print(f"retried {report['rows_retried']} rows failed transiently: {report['recovered']} recovered", file=sys.stderr)
        refused = report.get("refused") or {}
        if refused:  # to stderr: stdout is the JSON report
            reasons = ", ".join(f"{status} {n}" for status, n in refused.items())
            print(f"refused {sum(refused.values())} rows: {reasons}", file=sys.stderr)
    elif args.command == "score":
        report = run["score"](args.dataset, args.recipe, args.overwrite)
    elif args.command == "embed":
        report = run["embed"](args.dataset, args.recipe, args.overwrite)
    elif args.command == "negatives":
        report = run["negatives"](args.dataset, args.recipe, args.overwrite)
    elif args.command == "export":
        report = run["export"](args.dataset, args.recipe, args.overwrite, args.webdataset)
    else:
        raise AssertionError(args.command)
    _print_report(report)
    return 0


def cmd_dedup(args: argparse.Namespace) -> int:
    _print_report(_steps(args)["dedup"](args.dataset, args.recipe, args.overwrite))
    return 0


def cmd_neg_image(args: argparse.Namespace) -> int:
    from flows.recipe import load_recipe
    from pipeline import steps
    from pipeline.core.store import Dataset

    recipe = load_recipe(args.recipe)
    _print_report(steps.neg_image(Dataset(args.dataset), recipe.neg_image, recipe.runner(), overwrite=args.overwrite))
    return 0


def cmd_imgdiff(args: argparse.Namespace) -> int:
    from flows.recipe import load_recipe
    from pipeline import steps
    from pipeline.core.store import Dataset

    if not args.dataset:
        raise UsageError("the following arguments are required: --dataset")
    dataset = Dataset(args.dataset)
    if args.action == "import":
        report = steps.imgdiff_import(dataset, args.pairs, args.images, overwrite=args.overwrite)
        print(f"imported {report['stats'].get('rows_out', 0)} pairs into {args.dataset} (table imgdiff_import)", file=sys.stderr)
    elif args.action == "export-pairs":
        from pipeline.imgdiff.pairs import export_pairs

        recipe = load_recipe(args.recipe)
        percent = args.eval_percent if args.eval_percent is not None else recipe.export.get("eval_percent", 10)
        if not 0 < percent <= 100:
            raise UsageError(f"--eval-percent: must be in (0, 100], got {percent}")
        written = export_pairs(dataset, args.out, args.images_out, percent)
        print(f"wrote {written} held-out pairs to {args.out} (images in {args.images_out})")
        print(f"evaluate: foil eval --checkpoint CKPT --pairs {args.out} --images {args.images_out}")
        return 0
    else:
        recipe = load_recipe(args.recipe)
        report = steps.imgdiff(dataset, recipe.imgdiff, recipe.runner(), generate=recipe.imgdiff_generate, overwrite=args.overwrite)
        stats = report.get("stats", {})
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(stats.get("dropped", {}).items()))
        print(f"imgdiff: {stats.get('counts', {}).get('kept', 0)} of {stats.get('rows_in', 0)} pairs kept" + (f"; dropped: {dropped}" if dropped else ""), file=sys.stderr)
    _print_report(report)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from pipeline.embed.knn_index import build
    from pipeline.core.store import Dataset

    _print_report(build(Dataset(args.dataset), curated_only=not args.all, max_index_memory_usage=args.max_index_memory))
    return 0


def cmd_blind(args: argparse.Namespace) -> int:
    """Measure blind accuracy per kind with a fresh held-out fit: every candidate of neg_text,
    and (once refined) the kept ones."""
    from flows.recipe import load_recipe
    from pipeline import steps
    from pipeline.core import schema as S
    from pipeline.core.catalog import Catalog
    from pipeline.core.store import Dataset
    from pipeline.negatives.blind import TextEmbedder, measure

    dataset = Dataset(args.dataset)
    if not dataset.table(S.NEG_TEXT).exists():
        raise UsageError(f"{args.dataset} has no neg_text table: run `foil negatives --dataset {args.dataset}` first")
    if args.refine:
        params = dict(load_recipe(args.recipe).negatives_blind or {})
        if args.max_accuracy is not None:
            params["max_accuracy"] = args.max_accuracy
        steps.blind_refine(dataset, params, overwrite=args.overwrite, progress=True)
    rows = dataset.table(S.NEG_TEXT).read([S.SAMPLE_ID, S.KIND, S.CAPTION, S.NEG_CAPTION])
    embedder = TextEmbedder(progress=True)
    columns = [rows[c].to_pylist() for c in (S.SAMPLE_ID, S.CAPTION, S.NEG_CAPTION, S.KIND)]
    before = measure(*columns, embedder=embedder)
    after: dict[str, dict[str, float]] = {}
    if dataset.table(S.NEG_BLIND).exists():
        kept = Catalog(dataset).query(
            "SELECT n.sample_id, n.caption, n.negative_caption, n.kind FROM neg_text n JOIN neg_blind b "
            "USING (sample_id, kind, negative_caption) WHERE b.filter_reason IS NULL"
        )
        if kept.num_rows:
            after = measure(*[kept[c].to_pylist() for c in (S.SAMPLE_ID, S.CAPTION, S.NEG_CAPTION, S.KIND)], seed=1, embedder=embedder)
    table = [
        {"kind": k, "candidates": v["pairs"], "blind_accuracy": round(v["blind_accuracy"], 3),
         "kept": after.get(k, {}).get("pairs", 0) if after else None,
         "blind_accuracy_kept": round(after[k]["blind_accuracy"], 3) if k in after else None}
        for k, v in before.items()
    ]
    if args.format == "json":
        print(json.dumps(table, indent=1))
    else:
        print(f"{'kind':26s} {'candidates':>10s} {'blind':>6s} {'kept':>6s} {'blind(kept, refit)':>19s}")
        for r in table:
            kept_n = "-" if r["kept"] is None else str(r["kept"])
            acc = "-" if r["blind_accuracy_kept"] is None else f"{r['blind_accuracy_kept']:.3f}"
            print(f"{r['kind']:26s} {r['candidates']:10d} {r['blind_accuracy']:6.3f} {kept_n:>6s} {acc:>19s}")
    return 0


def cmd_knn(args: argparse.Namespace) -> int:
    from pipeline.embed.knn_index import KnnIndex
    from pipeline.core.store import Dataset

    index = KnnIndex(Dataset(args.dataset))
    if args.image is not None:
        try:
            blob = Path(args.image).read_bytes()
        except OSError as exc:
            raise UsageError(f"--image: cannot read {args.image}: {exc.strerror}") from None
        query = index.encode_image(blob)
    else:
        query = index.encode_text(args.text)
    rows = index.search(query, args.against, args.k)
    if args.format == "json":
        print(json.dumps(rows, ensure_ascii=False, indent=1))
    else:
        for r in rows:
            print(f"{r['rank']:>3}  {r['score']:7.4f}  {r['sample_id']}  {r['caption']}")
    return 0


def cmd_sugarcrepe(args: argparse.Namespace) -> int:
    from pipeline.core.store import Dataset
    from pipeline.negatives.sugarcrepe import export_sugarcrepe, import_sugarcrepe

    if args.action == "export":
        counts = export_sugarcrepe(Dataset(args.dataset), args.out, args.kinds)
        print(f"wrote {sum(counts.values())} items to {args.out}: " + ", ".join(f"{k}.json {n}" for k, n in sorted(counts.items())))
        print(f"evaluate: foil eval --checkpoint CKPT --model MODEL --images {args.out}/images --sugarcrepe {args.out}/*.json")
    else:
        counts = import_sugarcrepe(Dataset(args.dataset), args.files, args.images)
        print(f"imported {sum(counts.values())} negatives into {args.dataset}: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.core.store import Dataset
    from pipeline.report_html import write_report

    result = write_report(Dataset(args.dataset), args.out)
    skipped = [k for k, v in result.sections.items() if v != "ok"]
    print(f"{result.images} images and plots, {result.bytes / 1e6:.1f} MB, {result.seconds:.1f} s"
          + (f"; no data yet for: {', '.join(skipped)}" if skipped else ""), file=sys.stderr)
    print(result.path)
    return 0


def cmd_curate(args: argparse.Namespace) -> int:
    funnel = _steps(args)["curate"](args.dataset, args.recipe)
    for row in funnel:
        print(f"{row['reason']:<28} {row['rows']:>8}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers <= 0:
        raise UsageError(f"--workers: must be positive, got {args.workers}")
    _print_report(_steps(args)["train"](args.dataset, args.out, args.recipe, args.gpu, args.workers))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.models.factory import check_checkpoint, local_weights

    try:
        local = local_weights(args.checkpoint)  # a URI (s3://...) is copied into foil's cache once
    except FileNotFoundError:
        local = None
    if local is None or not Path(local).is_file():
        raise UsageError(f"--checkpoint: {args.checkpoint} is not a file")
    check_checkpoint(local)  # not a checkpoint: one line, before any flow starts
    if not (args.dataset or args.sugarcrepe or args.pairs or args.zeroshot or args.retrieval):
        raise UsageError("nothing to evaluate: give --dataset and/or --sugarcrepe/--pairs/--retrieval/--zeroshot files")
    if args.image_size is not None and args.image_size <= 0:
        raise UsageError(f"--image-size: must be positive, got {args.image_size}")
    from pipeline.core.benchmark_files import check_file
    from training import pairs

    images = args.images or "."
    for kind in ("sugarcrepe", "zeroshot"):
        for path in getattr(args, kind):
            check_file(kind, Path(path), Path(images))  # bad files fail here, before the model loads
    for path in args.pairs:
        pairs.read_pairs(Path(path), Path(args.images) if args.images else None)
    for path in args.retrieval:
        pairs.read_concepts(Path(path), Path(args.images) if args.images else None)
    metrics: dict[str, float] = {}
    if args.dataset or args.sugarcrepe or args.zeroshot:
        from training.jobs import EvalFiles

        eval_flow = _steps(args)["eval"]

        files = EvalFiles(images, tuple(args.sugarcrepe), (), tuple(args.zeroshot), **({"templates": tuple(args.templates)} if args.templates else {}))
        metrics.update(eval_flow(args.dataset, args.checkpoint, args.model, args.run_id, files))
    if args.pairs or args.retrieval:  # printed, not recorded in a dataset's metrics
        from pipeline.models import factory as M

        embedder = pairs.ModelEmbedder(M.create_model(args.model, pretrained=args.checkpoint), args.model, args.image_size)
        metrics.update(pairs.evaluate_files(embedder, args.pairs, args.retrieval, args.images))
    _print_report(metrics)
    return 0


def cmd_train_heads(args: argparse.Namespace) -> int:
    import pyarrow.compute as pc

    from pipeline.core import schema as S
    from pipeline.core.store import Dataset
    from training.heads import HeadsConfig, train_heads

    if args.steps <= 0 or args.batch_size <= 0 or args.lr <= 0:
        raise UsageError("--steps, --batch-size and --lr must be positive")
    table = Dataset(args.dataset).table(S.TRAIN)
    if not table.exists():
        raise UsageError(f"{args.dataset} has no table `train`: run `foil export` first")
    rows = table.read(columns=[S.CAPTION, S.SPLIT, S.IMAGE])
    rows = rows.filter(pc.equal(rows[S.SPLIT], args.split))
    cfg = HeadsConfig(model=args.model, steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    _print_report(train_heads(rows, cfg, args.out, progress=lambda line: print(line, flush=True)))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from training.submit import submit, training_entrypoint

    if args.workers is not None and args.workers <= 0:
        raise UsageError(f"--workers: must be positive, got {args.workers}")
    if not args.address.startswith(("http://", "https://")):
        raise UsageError(f"--address: expected the job server's http(s)://HOST:PORT, got {args.address!r}")
    entrypoint = training_entrypoint(args.python, args.dataset, args.recipe, args.out, args.workers, args.gpu)
    _, status = submit(args.address, entrypoint, wait=not args.no_wait, log=lambda line: print(line, flush=True))
    return 0 if status in ("SUCCEEDED", "PENDING", "RUNNING") else EXIT_FAILED


COMMANDS = {
    "sql": cmd_sql,
    "fetch-sample": cmd_fetch_sample,
    "heldout-pairs": cmd_heldout_pairs,
    "demo": cmd_demo,
    "crawl": cmd_stage,
    "score": cmd_stage,
    "embed": cmd_stage,
    "negatives": cmd_stage,
    "export": cmd_stage,
    "curate": cmd_curate,
    "sugarcrepe": cmd_sugarcrepe,
    "index": cmd_index,
    "knn": cmd_knn,
    "blind": cmd_blind,
    "dedup": cmd_dedup,
    "imgdiff": cmd_imgdiff,
    "neg-image": cmd_neg_image,
    "train": cmd_train,
    "eval": cmd_eval,
    "submit": cmd_submit,
    "train-heads": cmd_train_heads,
    "report": cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.core.catalog import QueryRefused
    from pipeline.core.stage import ConfigError
    from pipeline.core.store import StoreError

    if getattr(args, "ray_address", None):  # every Ray start in this process attaches there (runners, Ray Train)
        os.environ["RAY_ADDRESS"] = args.ray_address
    try:
        if getattr(args, "recipe", None) and args.command != "submit":  # submit's recipe is on the cluster
            from flows.recipe import load_recipe

            load_recipe(args.recipe)  # a bad recipe fails here, before any flow starts
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, QueryRefused, StoreError) as exc:
        print(f"foil {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"foil {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        from pipeline.steps import StepFailed

        if isinstance(exc, StepFailed):
            print(f"foil {args.command}: failed: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if os.environ.get("FOIL_DEBUG"):
            raise
        print(f"foil {args.command}: failed: {type(exc).__name__}: {exc} (set FOIL_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILED


def entry() -> None:
    """The `foil` console script: `main`, then an exit that skips the interpreter's teardown
    (pipeline/core/shutdown.py). In-process callers use `main` and get the code back."""
    from pipeline.core.shutdown import exit_quickly

    exit_quickly(main())


if __name__ == "__main__":
    entry()
