"""`foil report` on a demo-like dataset, then loaded in a real headless Chromium.

The dataset is built the demo's way on the local runner: real emoji images (plus rows whose
download failed) scored, deduplicated, curated and given text negatives by foil's own stages;
the tables whose stages are too slow for a unit test (embeddings' CLIP scores, training metrics,
image negatives, Img-Diff pairs) are written with their schemas from pipeline.core.schema.

Chromium (Debian's `chromium`, which `make test` installs) is driven over its DevTools protocol:
every <img> must have decoded (naturalWidth > 0), the console must hold no error, and no request
may leave the page (file: and data: only). Run this file as a script to screenshot a dataset's
report for the README: `python tests/pipeline/test_report_html.py DATASET docs/report.png`.
"""

from __future__ import annotations

import base64
import html.parser
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline import steps
from pipeline.core import schema as S
from pipeline.core.runners import LocalRunner
from pipeline.core.store import Dataset, shard_name
from pipeline.report_html import SECTIONS, ReportLimits, highlight_edit, write_report

CHROMIUM = "chromium"


# -- the dataset -------------------------------------------------------------------------------
def _png(emoji_dir: Path, name: str) -> bytes:
    return (emoji_dir / "img/google/64" / name).read_bytes()


def build_demo_like(root: Path, emoji_dir: Path) -> Dataset:
    from pipeline.demo.sample import emoji_items

    items = emoji_items(emoji_dir, 48)
    ds = Dataset(root)
    raw = ds.table(S.RAW)
    for s in range(2):
        out = {name: [] for name in S.RAW_SCHEMA.names}
        for it in items[s * 24 : (s + 1) * 24]:
            url = f"http://h/{it.image}"
            blob = _png(emoji_dir, it.image)
            row = {S.SAMPLE_ID: S.sample_id(url, it.caption), S.URL: url, S.CAPTION: it.caption, S.STATUS: "success", S.IMAGE: blob,
                   S.WIDTH: 64, S.HEIGHT: 64, S.ORIGINAL_WIDTH: 64, S.ORIGINAL_HEIGHT: 64}
            for name in S.RAW_SCHEMA.names:
                out[name].append(row.get(name))
        if s == 1:  # failures, as the crawl records them: no image, a status and an error kind
            for i, (status, kind) in enumerate([("failed_to_download", "http_404"), ("failed_to_download", "timeout"), ("opted_out", "opt_out")]):
                url = f"http://h/missing-{i}.png"
                row = {S.SAMPLE_ID: S.sample_id(url, "gone"), S.URL: url, S.CAPTION: "gone", S.STATUS: status, S.ERROR_KIND: kind, S.ERROR: f"{kind} for {url}"}
                for name in S.RAW_SCHEMA.names:
                    out[name].append(row.get(name))
        raw.write_shard(shard_name(s), pa.table(out, schema=S.RAW_SCHEMA))
    raw.write_manifest("crawl", {}, [S.URLS])
    steps.score(ds, LocalRunner(progress=False))
    steps.dedup(ds, {})
    ids = ds.table(S.RAW).read(columns=[S.SAMPLE_ID, S.STATUS]).to_pylist()
    ok = [r[S.SAMPLE_ID] for r in ids if r[S.STATUS] == "success"]

    # CLIP scores, as `foil embed` writes them (the vectors are not what the report reads)
    emb = S.embeddings_schema(4)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(np.full(4 * len(ok), 0.5, dtype=np.float16)), 4)
    ds.table(S.EMBEDDINGS).write_shard("part-00000", pa.table({
        S.SAMPLE_ID: ok, S.IMAGE_EMBEDDING: vec, S.TEXT_EMBEDDING: vec,
        S.CLIP_SCORE: [0.1 + 0.3 * (i % 10) / 10 for i in range(len(ok))], S.MODEL: ["foil-tiny-vit"] * len(ok),
    }, schema=emb))
    ds.table(S.EMBEDDINGS).write_manifest("embed", {}, [S.RAW])
    steps.curate(ds, {"min_clip_score": 0.15})
    steps.negatives(ds, {"kinds": ["replace_attribute", "replace_object", "swap_object"], "seed": 0}, LocalRunner(progress=False))

    # training curves and evaluation, as training/jobs.py records them
    metrics = {c: [] for c in S.METRICS_SCHEMA.names}
    for step in range(1, 21):
        for name, value in (("loss", 4.0 / step), ("lr", 5e-4 * min(1, step / 5))):
            for c, v in zip(S.METRICS_SCHEMA.names, ("run-a", "train", step, name, value)):
                metrics[c].append(v)
    for name, value in (("image_to_text_R@1", 0.25), ("hard_negative_accuracy", 0.63)):
        for c, v in zip(S.METRICS_SCHEMA.names, ("run-a", "eval", 0, name, value)):
            metrics[c].append(v)
    ds.table(S.METRICS).write_shard("part-00000", pa.table(metrics, schema=S.METRICS_SCHEMA))
    ds.table(S.METRICS).write_manifest("train", {}, [S.TRAIN])

    # image negatives and Img-Diff pairs with their boxes
    neg = {name: [] for name in S.NEG_IMAGE_SCHEMA.names}
    for i in range(6):
        row = {S.SAMPLE_ID: ok[i], S.KIND: "replace_object", S.CAPTION: items[i].caption, S.NEG_CAPTION: items[i + 10].caption,
               S.METHOD: "mined" if i % 2 else "inpaint", S.SOURCE_ID: ok[i + 10], S.BOX: [8, 8, 40, 40], S.SEED: i,
               S.PIPELINE: "tiny-inpaint", S.SCORE_NEGATIVE: 0.3, S.SCORE_POSITIVE: 0.2, S.TRAINABLE: i % 2 == 1,
               S.CHECKS: ["margin"], S.IMAGE: _png(emoji_dir, items[i + 10].image)}
        for name in S.NEG_IMAGE_SCHEMA.names:
            neg[name].append(row.get(name))
    ds.table(S.NEG_IMAGE).write_shard("part-00000", pa.table(neg, schema=S.NEG_IMAGE_SCHEMA))
    ds.table(S.NEG_IMAGE).write_manifest("neg_image", {}, [S.NEG_TEXT])
    pairs = {name: [] for name in S.IMGDIFF_SCHEMA.names}
    for i in range(5):
        row = {S.PAIR_ID: f"pair-{i}", S.SAMPLE_ID: ok[i], S.CAPTION_A: items[i].caption, S.CAPTION_B: items[i + 20].caption,
               S.OBJECT_A: "a", S.OBJECT_B: "b", S.METHOD: "p2p", S.SEED: i, S.PIPELINE: "tiny-sdxl", S.SIMILARITY: 0.93,
               S.BOXES: [[4, 4, 30, 30], [34, 34, 60, 60]], S.BOX_SCORES: [0.4, 0.2], S.DIFFERENCE_CAPTION: "a replaced by b",
               S.FILTER_REASON: None if i < 4 else "too_similar", S.TRAINABLE: False, S.CHECKS: [],
               S.IMAGE_A: _png(emoji_dir, items[i].image), S.IMAGE_B: _png(emoji_dir, items[i + 20].image)}
        for name in S.IMGDIFF_SCHEMA.names:
            pairs[name].append(row.get(name))
    ds.table(S.IMGDIFF).write_shard("part-00000", pa.table(pairs, schema=S.IMGDIFF_SCHEMA))
    ds.table(S.IMGDIFF).write_manifest("imgdiff", {}, [S.NEG_TEXT])
    from pipeline.core.catalog import Catalog

    Catalog(ds).refresh()
    return ds


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory, emoji_dir) -> Dataset:
    return build_demo_like(tmp_path_factory.mktemp("report") / "ds", emoji_dir)


# -- the page --------------------------------------------------------------------------------
class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_highlight_marks_exactly_the_edit():
    pos, neg = highlight_edit("a red apple on a table", "a green apple on a table", [2, 5], "green")
    assert pos == "a <del>red</del> apple on a table" and neg == "a <ins>green</ins> apple on a table"
    # a swap: two spans, new texts joined by '|'; the second span moves by the first's change of length
    pos, neg = highlight_edit("a cat chases a big dog", "a dog chases a big cat", [2, 5, 19, 22], "dog|cat")
    assert neg == "a <ins>dog</ins> chases a big <ins>cat</ins>" and pos.count("<del>") == 2
    # an insertion (empty span) shows a caret on the positive
    pos, neg = highlight_edit("a cat", "a small cat", [2, 2], "small ")
    assert "caret" in pos and neg == "a <ins>small </ins>cat"
    # spans that do not rebuild the negative: no mark rather than a wrong one; text is escaped
    assert highlight_edit("a <b> cat", "a dog", [2, 5], "dog") == ("a &lt;b&gt; cat", "a dog")
    assert highlight_edit("a cat", "a dog", None, None) == ("a cat", "a dog")


def test_report_has_every_section_and_needs_no_network(demo_like, tmp_path):
    result = write_report(demo_like)
    assert result.path == demo_like.uri("report.html")
    assert result.sections == {s.key: "ok" for s in SECTIONS}
    text = Path(result.path).read_text(encoding="utf-8")
    tags = _Tags()
    tags.feed(text)
    assert not [t for t, _ in tags.tags if t in ("script", "link", "iframe", "object", "embed")]
    imgs = [a for t, a in tags.tags if t == "img"]
    assert len(imgs) == result.images and result.images > 40
    assert all(a["src"].startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for a in imgs)
    assert not [a for t, a in tags.tags if {"href", "src"} & set(a) and not (a.get("src") or a.get("href") or "").startswith(("data:", "#"))]
    assert "url(" not in text.split("<style>")[1].split("</style>")[0]  # no fetched fonts or backgrounds in the CSS
    # the content, not just its frame: reasons, edits, boxes' pairs, the eval table
    for needle in ("crawl:failed_to_download", "http_404", "low_clip_score", "<del>", "<ins>", "dropped: too_similar",
                   "hard_negative_accuracy", "replace_object", "mined", "inpaint"):
        assert needle in text, needle
    assert result.bytes < 3_000_000

    limited = write_report(demo_like, str(tmp_path / "small.html"), ReportLimits(kept=2, dropped=2, negatives=2, image_negatives=1, imgdiff_pairs=1))
    assert limited.images < result.images - 40  # the caps hold
    assert (tmp_path / "small.html").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_dataset_with_only_raw_still_reports(tmp_path, emoji_dir):
    from tests.conftest import make_emoji_raw
    from pipeline.demo.sample import emoji_items

    ds = Dataset(tmp_path / "ds")
    make_emoji_raw(ds, emoji_dir, emoji_items(emoji_dir, 6), shards=1)
    from pipeline.core.catalog import Catalog

    Catalog(ds).refresh()  # no scores yet: the curation views wait for them
    result = write_report(ds)
    assert result.sections["crawl"] == "ok" and result.sections["overview"] == "ok"
    assert {k for k, v in result.sections.items() if v.startswith("skipped")} == {s.key for s in SECTIONS} - {"crawl", "overview"}
    assert "Not shown (no data yet)" in Path(result.path).read_text()


def test_cli_report_writes_the_page_and_names_a_bad_dataset(demo_like, tmp_path, capsys):
    from flows.cli import main

    out = tmp_path / "r" / "page.html"
    assert main(["report", "--dataset", str(demo_like.root), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))
    assert out.stat().st_size > 10_000
    assert main(["report", "--dataset", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no catalog.duckdb" in err[0]


def test_a_stage_flow_links_the_report_as_an_artifact(demo_like, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.pipeline_flows import curate_flow
    from pipeline.core.catalog import Catalog

    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    copy = tmp_path / "ds"
    shutil.copytree(demo_like.root, copy)
    Catalog(Dataset(copy)).refresh()  # the copy's views over its own shards
    # Prefect's temporary server (no PREFECT_API_URL here) gets 20 s to start by default: too few
    # on a busy two-core machine.
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180}):
        state = curate_flow(str(copy), return_state=True)
    assert state.is_completed()
    page = copy / "report.html"
    assert page.stat().st_size > 10_000
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["report"]), flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert len(found) == 1 and page.as_uri() in found[0].data


# -- Chromium --------------------------------------------------------------------------------
class DevTools:
    """One page of a headless Chromium, driven over the DevTools websocket."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, timeout: float = 60, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.time() + timeout
        while time.time() < deadline:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.time())))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)
        raise TimeoutError(method)

    def wait_for(self, event: str, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for i, e in enumerate(self.events):
                if e.get("method") == event:
                    return self.events.pop(i)
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.time()))))
        raise TimeoutError(event)


def render_in_chromium(page: Path, screenshot: Path, width: int = 1400, max_height: int | None = None) -> dict:
    """Load `page` in headless Chromium; return its images' sizes, console errors and requests,
    and write a PNG screenshot (the whole page, or its top `max_height` pixels)."""
    binary = shutil.which(CHROMIUM)
    assert binary, "Debian's chromium is not installed: `make test` installs it (apt-get install chromium)"
    profile = Path(tempfile.mkdtemp(prefix="foil-chromium-"))
    args = [binary, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-dev-shm-usage",
            "--disable-extensions", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={profile}", f"--window-size={width},1000", "about:blank"]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1) and time.time() < deadline:
            assert proc.poll() is None, f"chromium exited with {proc.returncode}"
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        tab = DevTools(next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"))
        for domain in ("Page", "Runtime", "Log", "Network"):
            tab.call(f"{domain}.enable")
        tab.call("Page.navigate", url=page.resolve().as_uri())
        tab.wait_for("Page.loadEventFired")
        images = json.loads(tab.call("Runtime.evaluate", returnByValue=True, expression=(
            "JSON.stringify(Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})))"
        ))["result"]["value"])
        size = tab.call("Page.getLayoutMetrics")["cssContentSize"]
        height = int(size["height"]) if max_height is None else min(int(size["height"]), max_height)
        shot = tab.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        errors = [e for e in tab.events if (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
                  or e.get("method") == "Runtime.exceptionThrown"
                  or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
        requests = [e["params"]["request"]["url"][:60] for e in tab.events if e.get("method") == "Network.requestWillBeSent"]
        tab.ws.close()
        return {"images": images, "errors": errors, "requests": requests, "page_height": int(size["height"])}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def test_report_loads_in_headless_chromium(demo_like, tmp_path):
    from PIL import Image

    result = write_report(demo_like, str(tmp_path / "report.html"))
    seen = render_in_chromium(Path(result.path), tmp_path / "report.png")
    assert len(seen["images"]) == result.images
    broken = [i for i in seen["images"] if not (i["complete"] and i["width"] > 0)]
    assert not broken, broken
    assert seen["errors"] == []
    assert all(u.startswith(("file:", "data:")) for u in seen["requests"]), seen["requests"]
    with Image.open(tmp_path / "report.png") as shot:
        assert shot.width == 1400 and shot.height == seen["page_height"] > 2000
        assert len(shot.getcolors(1 << 24) or []) > 500  # drawn, not a blank page


if __name__ == "__main__":  # screenshot a dataset's report (docs/report.png)
    dataset, target = Dataset(sys.argv[1]), Path(sys.argv[2])
    made = write_report(dataset, str(Path(tempfile.mkdtemp()) / "report.html"))
    seen = render_in_chromium(Path(made.path), target, max_height=int(os.environ.get("FOIL_SHOT_HEIGHT", "2200")))
    bad = [i for i in seen["images"] if not (i["complete"] and i["width"] > 0)]
    print(json.dumps({"report": made.as_dict(), "images": len(seen["images"]), "broken": bad, "errors": seen["errors"], "screenshot": str(target)}, indent=1))
