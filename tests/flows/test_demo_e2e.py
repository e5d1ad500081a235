"""`foil demo` end to end on a small slice of the emoji sample, then queried with `foil sql`.

Real components throughout: an HTTP server on 127.0.0.1, img2dataset's downloader on a local
Ray cluster, a Prefect flow without a server, DuckDB over parquet, a Ray Train job. The demo is
then run again on the same folder: it must resume (nothing recrawled) and duplicate nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import free_port

TINY_RECIPE = """
runner: {kind: ray, retries: 1}
crawl:
  shard_rows: 40
  params: {image_size: 64, resize_mode: border, encode_format: png, encode_quality: 6, thread_count: 8}
heads: {model: foil-effnet-lite0-minilm, steps: 40, batch_size: 64}
dedup: {semantic_threshold: 0.99}
curate: {min_width: 32, min_height: 32, clip_score_top_fraction: 0.9}
negatives: {kinds: [replace_attribute, replace_object], seed: 0, knn: {k: 8}}
neg_image:
  methods: [mined, p2p]
  p2p: {pipeline: "tiny:txt2img", steps: 2, max_per_shard: 1}
imgdiff: {generate: {pipeline: "tiny:txt2img", steps: 2, max_pairs_per_shard: 1}}
export: {eval_percent: 20, webdataset: true}
train: {model: foil-tiny-vit, steps: 6, batch_size: 16, warmup_steps: 1, checkpoint_every: 3, log_every: 3, workers: 1}
"""


def foil(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=timeout)


def cli_sql(dataset, query: str) -> list[dict]:
    proc = foil("sql", "--dataset", str(dataset), query, "--format", "json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def sql(dataset, query: str) -> list[dict]:
    """The same query through the catalog in this process (`foil sql` itself is run above)."""
    from pipeline.core.catalog import Catalog
    from pipeline.core.store import Dataset

    return json.loads(json.dumps(Catalog(Dataset(dataset)).query(query).to_pylist(), default=int))


@pytest.mark.slow
def test_demo_end_to_end_then_resume(tmp_path, emoji_dir):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "demo"
    port = str(free_port())
    args = ("demo", "--out", str(out), "--limit", "120", "--recipe", str(recipe), "--port", port, "--sample-dir", str(emoji_dir))

    first = foil(*args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "# foil run summary" in first.stdout and "hard_negative_accuracy" in first.stdout
    assert (out / "summary.md").exists() and (out / "summary.json").exists()

    assert cli_sql(out, "select count(*) as n from raw") == [{"n": 120}]
    assert sql(out, "select count(distinct sample_id) as n from raw") == [{"n": 120}]
    curated = sql(out, "select count(*) as n from curated")[0]["n"]
    assert curated == sql(out, "select count(*) as n from curation where drop_reason is null")[0]["n"]
    assert 80 <= curated < 120
    # the whole loop ran: the flow's own filter model embedded every image, and its CLIP score
    # removed the worst-matched tenth of what the rules kept
    assert sql(out, "select count(*) as n, count(distinct model) as m from embeddings") == [{"n": 120, "m": 1}]
    removed = {r["reason"]: r["rows"] for r in sql(out, "select reason, rows from funnel")}
    assert removed["low_clip_score"] > 0
    assert len(list((out / "heads").glob("heads-*.pt"))) == 1 and (out / "knn_index").is_dir()
    assert sql(out, "select count(*) as n from neg_knn")[0]["n"] > 0
    funnel = sql(out, "select sum(rows) as n from funnel")
    assert funnel == [{"n": 120}]  # every row is either kept or removed for a named reason
    kinds = {r["kind"]: r["negatives"] for r in sql(out, "select * from neg_text_kinds")}
    assert kinds["replace_attribute"] > 0 and kinds["replace_object"] > 0
    # Img-Diff: the sample's own variant pairs imported (at most --limit), a tiny-pipeline pair
    # per neg_text shard generated (flagged); each pair kept or dropped for a named reason
    assert sql(out, "select count(*) as n from imgdiff_import") == [{"n": 120}]
    pairs = {r["method"]: r for r in sql(out, "select method, count(*) as n, count(filter_reason) as dropped, bool_or(trainable) as t from imgdiff group by method")}
    assert pairs["import"]["n"] == 120 and 0 < pairs["import"]["dropped"] < 120 and pairs["import"]["t"]
    assert pairs["p2p"]["n"] >= 1 and not pairs["p2p"]["t"]
    kept_pairs = sql(out, "select count(*) as n from imgdiff where filter_reason is null and trainable")[0]["n"]
    train_rows = sql(out, "select split, count(*) as n from train group by split order by split")
    # every curated row, and two rows (each the other's negative) per kept trainable pair
    assert sum(r["n"] for r in train_rows) == curated + 2 * kept_pairs and {r["split"] for r in train_rows} == {"eval", "train"}
    # image negatives: mined ones (real images) are trained on, the tiny pipeline's never
    methods = {r["method"]: r for r in sql(out, "select method, count(*) as n, bool_and(trainable) as t, bool_or(trainable) as any_t from neg_image group by method")}
    assert methods["mined"]["n"] > 0 and methods["mined"]["t"]
    assert "p2p" not in methods or not methods["p2p"]["any_t"]
    # the tiny pipeline ran on one candidate per crawl shard: each image kept or rejected by a named check
    p2p_made = sql(out, "select count(*) as n from neg_image_p2p")[0]["n"]
    p2p_rejected = sql(out, "select coalesce(sum(rows), 0) as n from drop_reasons where table_name = 'neg_image_p2p' and reason like 'p2p:%'")[0]["n"]
    assert p2p_made == methods.get("p2p", {"n": 0})["n"] and 1 <= p2p_made + p2p_rejected <= 3
    expected = sql(out, "select count(distinct n.sample_id) as n from neg_image n join curated c using (sample_id) where n.trainable")[0]["n"]
    assert sql(out, "select count(*) as n from train where negative_image is not null and negative_kind <> 'imgdiff'")[0]["n"] == expected > 0
    assert sql(out, "select count(*) as n from train where negative_image is not null and negative_kind = 'imgdiff'")[0]["n"] == 2 * kept_pairs
    agree = "select count(distinct t.sample_id) as n from train t join neg_image n on n.sample_id = t.sample_id and n.negative_caption = t.negative_caption and n.trainable where t.negative_image is not null"
    assert sql(out, agree)[0]["n"] == expected  # each negative image came with its own caption
    curve = sql(out, "select step, value from train_metrics where name = 'loss' order by step")
    assert [r["step"] for r in curve] == [3, 6]
    evals = {r["name"]: r["value"] for r in sql(out, "select name, value from eval_metrics")}
    # Winoground-style scores on the eval split's kept pairs, exported for `foil eval --pairs`
    heldout = (out / "imgdiff_heldout" / "pairs.jsonl").read_text().splitlines()
    pair_metrics = {k: evals.pop(k) for k in list(evals) if k.startswith("pairs:pairs:")}
    assert pair_metrics["pairs:pairs:pairs"] == pair_metrics["pairs:pairs:imgdiff:pairs"] == len(heldout) > 0
    assert all(0 <= pair_metrics[f"pairs:pairs:{k}_score"] <= 1 for k in ("text", "image", "group"))
    # What the demo recorded is what its checkpoint scores on the eval split, recomputed here.
    import pyarrow.compute as pc

    from pipeline.core import schema as S
    from pipeline.core.store import Dataset
    from pipeline.models import factory as M
    from training.evaluate import evaluate

    checkpoint = sql(out, "select checkpoint from runs")[0]["checkpoint"]
    rows = Dataset(out).table(S.TRAIN).read()
    expected = evaluate(M.create_model("foil-tiny-vit", pretrained=checkpoint), "foil-tiny-vit", rows.filter(pc.equal(rows[S.SPLIT], "eval")))
    assert evals["eval_rows"] == expected["eval_rows"] == next(r["n"] for r in train_rows if r["split"] == "eval")
    assert evals == pytest.approx(expected, abs=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["crawl_rate"]["rows_crawled_now"] == 120
    assert sorted(p.parent.name for p in (out / "train_wds").glob("*/*.tar")) == ["eval"] * 3 + ["train"] * 3

    again = foil(*args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["crawl_rate"]["rows_crawled_now"] == 0  # every crawl shard was already finished
    assert sql(out, "select count(*) as n, count(distinct sample_id) as d from raw") == [{"n": 120, "d": 120}]
    assert sql(out, "select count(*) as n from curated")[0]["n"] == curated
    assert sql(out, "select count(*) as n from runs") == [{"n": 1}]
    assert [r["step"] for r in sql(out, "select step from train_metrics where name = 'loss' order by step")] == [3, 6]
