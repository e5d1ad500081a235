"""Diffusion-made image negatives end to end with the tiny random-weight pipelines on CPU:
p2p pairs and inpainting on a few emoji rows, the pipeline loaded once, every row untrainable."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline import steps
from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.runners import LocalRunner
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset, shard_name
from pipeline.negatives.image import GENERATED_TABLES
from pipeline.stages import build_stage
from tests.conftest import make_emoji_raw

HEARTS = ["yellow heart", "blue heart", "green heart", "purple heart"]  # names of Noto emoji


def _write_text_negatives(ds: Dataset) -> None:
    """One replace_attribute negative per row, as `foil negatives` writes them ("yellow heart" ->
    "blue heart", the colour's span edited), in the raw table's shards."""
    for shard in sorted(ds.table(S.RAW).finished_shards()):
        raw = ds.table(S.RAW).read_shard(shard, columns=[S.SAMPLE_ID, S.CAPTION]).to_pylist()
        rows = []
        for r in raw:
            colour = r[S.CAPTION].split()[0]
            other = HEARTS[(HEARTS.index(r[S.CAPTION]) + 1) % len(HEARTS)].split()[0]
            rows.append({
                S.SAMPLE_ID: r[S.SAMPLE_ID], S.KIND: "replace_attribute", S.CAPTION: r[S.CAPTION],
                S.NEG_CAPTION: f"{other} heart", S.EDIT_SPAN: [0, len(colour)], S.EDIT_FROM: colour, S.EDIT_TO: other,
                S.GENERATOR: "test@1", S.CHECKS: ["differs_from_positive"], S.SOURCE_ID: None,
            })
        ds.table(S.NEG_TEXT).write_shard(shard, pa.Table.from_pylist(rows, schema=S.NEG_TEXT_SCHEMA))
    ds.table(S.NEG_TEXT).write_manifest("negatives", {}, [S.RAW])


def test_p2p_and_inpaint_with_tiny_pipelines_end_to_end(tmp_path, emoji_dir):
    from pipeline.demo.sample import emoji_items

    items = [it for it in emoji_items(emoji_dir) if it.caption in HEARTS]
    ds = Dataset(tmp_path / "ds")
    make_emoji_raw(ds, emoji_dir, items, shards=2)
    runner = LocalRunner(progress=False)
    steps.score(ds, runner)
    steps.embed(ds, {"model": "foil-tiny-vit", "batch_size": 8}, runner)
    _write_text_negatives(ds)
    generated = {"steps": 2, "guidance": 2.0, "batch_size": 2, "max_per_shard": 1}
    params = {
        "methods": ["mined", "p2p", "inpaint"], "kinds": ["replace_attribute"], "margin": None,
        "p2p": {"pipeline": "tiny:txt2img", **generated},
        "inpaint": {"pipeline": "tiny:inpaint", "grounding": "cross_attention", "dilate_px": 2, **generated},
    }
    out = steps.neg_image(ds, params, runner)

    for method in ("p2p", "inpaint"):
        report = out["generated"][method]
        assert report["stats"]["counts"]["model_loads"] == 1  # one pipeline for both shards
        assert report["stats"]["counts"]["over_max_per_shard"] == len(items) - 2
    rows = ds.table(S.NEG_IMAGE).read().to_pylist()
    by_method: dict[str, list[dict]] = {}
    for r in rows:
        by_method.setdefault(r[S.METHOD], []).append(r)
    assert len(by_method["mined"]) == len(items)  # every other heart is in the sample
    raw = {r[S.SAMPLE_ID]: r[S.IMAGE] for r in ds.table(S.RAW).read(columns=[S.SAMPLE_ID, S.IMAGE]).to_pylist()}
    for method, pipeline_id in (("p2p", "tiny:txt2img"), ("inpaint", "tiny:inpaint")):
        made = by_method[method]
        assert len(made) == 2  # one per shard (max_per_shard 1), no margin check to fail
        for r in made:
            assert r[S.TRAINABLE] is False and r[S.PIPELINE] == pipeline_id and r[S.SEED] is not None
            assert any(c.startswith("area:") for c in r[S.CHECKS])
            Image.open(io.BytesIO(r[S.IMAGE])).verify()
    for r in by_method["inpaint"]:
        assert r[S.SOURCE_ID] == r[S.SAMPLE_ID] and "outside_mask:unchanged" in r[S.CHECKS]
        mask = np.asarray(Image.open(io.BytesIO(r[S.MASK]))) > 127
        source = np.asarray(Image.open(io.BytesIO(raw[r[S.SAMPLE_ID]])).convert("RGB"))
        edited = np.asarray(Image.open(io.BytesIO(r[S.IMAGE])).convert("RGB"))
        assert mask.any() and (~mask).any()
        assert np.array_equal(edited[~mask], source[~mask])  # outside the mask: the source, exactly
        x0, y0, x1, y1 = r[S.BOX]
        assert mask[y0:y1, x0:x1].sum() == mask.sum()

    counts = {(c["method"], c["kind"]): c for c in Catalog(ds).query("select * from neg_image_counts").to_pylist()}
    assert counts[("p2p", "replace_attribute")]["rows"] == 2 and counts[("p2p", "replace_attribute")]["trainable"] == 0
    assert counts[("mined", "replace_attribute")]["trainable"] == len(items)
    exported = Catalog(ds).query("select method, count(*) n from export_negative_images group by all").to_pylist()
    assert {r["method"] for r in exported} <= {"mined"}  # random-weight rows never reach training

    # A generated shard counts its own rejections: an impossible area window drops every image.
    strict = {**params, "methods": ["inpaint"], "inpaint": {**params["inpaint"], "min_area": 1.0}}
    out = steps.neg_image(ds, strict, runner, overwrite=True)
    assert out["generated"]["inpaint"]["stats"]["dropped"] == {"inpaint:area": 2}
    assert ds.table(S.NEG_IMAGE).read().num_rows == 0  # inpaint only, and every image rejected
    drops = {(r["method"], r["reason"]): r["rows"] for r in Catalog(ds).query("select * from neg_image_drops").to_pylist()}
    assert drops[("inpaint", "area")] == 2
    assert ds.table(GENERATED_TABLES["inpaint"]).exists()


def test_generation_settings_are_checked_before_any_work():
    with pytest.raises(ConfigError, match=r"neg_image\.p2p\.pipeline: /no/such/pipeline does not exist"):
        build_stage("neg_image", {"method": "p2p", "pipeline": "/no/such/pipeline"})
    with pytest.raises(ConfigError, match=r"neg_image\.inpaint\.grounding: 'sam'"):
        build_stage("neg_image", {"method": "inpaint", "pipeline": "tiny:inpaint", "grounding": "sam"})
    with pytest.raises(ConfigError, match=r"neg_image\.p2p\.min_area: 0\.5 is above max_area 0\.2"):
        build_stage("neg_image", {"method": "p2p", "min_area": 0.5, "max_area": 0.2})
