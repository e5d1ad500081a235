"""SugarCrepe files out and back in: the same (kind, caption, negative) triples, in SugarCrepe's
own layout, readable by `foil eval`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.runners import LocalRunner
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset
from pipeline.negatives.sugarcrepe import export_sugarcrepe, import_sugarcrepe
from tests.conftest import make_emoji_raw
from pipeline.core.benchmark_files import check_file
from pipeline.stages import stage_class


def _triples(ds: Dataset) -> set[tuple[str, str, str]]:
    rows = Catalog(ds).query("select kind, caption, negative_caption from negatives").to_pylist()
    return {(r["kind"], r["caption"], r["negative_caption"]) for r in rows}


def test_export_then_import_round_trips(tmp_path, emoji_dir):
    from pipeline.demo.sample import emoji_items

    ds = Dataset(tmp_path / "ds")
    items = [it for it in emoji_items(emoji_dir) if " " in it.caption][:40]
    make_emoji_raw(ds, emoji_dir, items, shards=2)
    runner = LocalRunner(progress=False)
    runner.run(stage_class("score"), {}, ds, S.RAW, S.SCORES)
    Catalog(ds).refresh()
    runner.run(stage_class("negatives"), {"kinds": ["replace_object", "add_attribute", "shuffle_trigrams"]}, ds, S.RAW, S.NEG_TEXT, input_view="curated")
    Catalog(ds).refresh()

    out = tmp_path / "sc"
    counts = export_sugarcrepe(ds, out)
    assert set(counts) <= {"replace_obj", "add_att", "shuffle_trigrams"} and sum(counts.values()) == len(_triples(ds))
    data = json.loads((out / "replace_obj.json").read_text())
    first = data["0"]
    assert set(first) == {"filename", "caption", "negative_caption"}
    assert (out / "images" / first["filename"]).read_bytes()[:4] == b"\x89PNG"
    for name in counts:
        assert check_file("sugarcrepe", out / f"{name}.json", out / "images") == counts[name]

    back = Dataset(tmp_path / "back")
    imported = import_sugarcrepe(back, sorted(out.glob("*.json")), out / "images")
    assert _triples(back) == _triples(ds)  # replace_obj.json -> replace_object again
    per_kind = Catalog(back).query("select kind, count(*) as n from neg_text group by kind").to_pylist()
    assert imported == {r["kind"]: r["n"] for r in per_kind}
    assert Catalog(back).query("select count(*) n from raw where status = 'success'").column("n")[0].as_py() == len(list((out / "images").iterdir()))

    with pytest.raises(ConfigError, match="already has tables"):
        import_sugarcrepe(back, sorted(out.glob("*.json")), out / "images")


def test_import_names_the_bad_item_and_field(tmp_path):
    (tmp_path / "img").mkdir()
    bad = tmp_path / "swap_att.json"
    bad.write_text(json.dumps({"0": {"filename": "x.jpg", "caption": "a red car"}}))
    with pytest.raises(ConfigError, match=r"swap_att.json: item 0: missing or empty field 'negative_caption'"):
        import_sugarcrepe(Dataset(tmp_path / "ds"), [bad], tmp_path / "img")
    bad.write_text(json.dumps({"0": {"filename": "x.jpg", "caption": "a red car", "negative_caption": "a blue car"}}))
    with pytest.raises(ConfigError, match=r"item 0: image .*x.jpg not found"):
        import_sugarcrepe(Dataset(tmp_path / "ds"), [bad], tmp_path / "img")


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "sugarcrepe", "import", "--dataset", str(tmp_path / "d"), "--images", str(tmp_path), str(tmp_path / "nope.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "nope.json: no such file" in proc.stderr
