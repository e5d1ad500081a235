"""The blind baseline and the refinement, with the real MiniLM encoder and real emoji captions.

Two kinds of synthetic negatives make the expected answers known: an "artifact" negative is the
caption with a tell-tale word appended (a text-only scorer must find it), a "fair" negative is
a real emoji name that is no sample's caption (no text-only scorer can tell it from a
real caption; a name that is also a sample's caption would be seen as real in training).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline import steps
from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.stage import ConfigError
from pipeline.core.store import Dataset
from pipeline.demo.sample import emoji_items, emoji_sample_dir
from pipeline.negatives.blind import BlindRefineStep, TextEmbedder, accuracy_by_kind, embed_pairs, held_out_margins, refine
from pipeline.report import build_summary

N = 90
TELL = " reflected upside down in a puddle"


@pytest.fixture(scope="module")
def rows() -> dict[str, list[str]]:
    names = [i.caption for i in emoji_items(emoji_sample_dir())]
    captions, others = names[::7][:N], names[3::7][:N]  # fair negatives: real names, but no sample's caption
    ids = [f"s{i}" for i in range(len(captions))]
    out: dict[str, list[str]] = {S.SAMPLE_ID: [], S.CAPTION: [], S.NEG_CAPTION: [], S.KIND: []}
    for i, (sid, cap) in enumerate(zip(ids, captions)):
        # artifact: the give-away on every pair; mixed: on half of the pairs, a real caption on the rest
        for kind, neg in (("artifact", cap + TELL), ("fair", others[i]),
                          ("mixed", cap + TELL if i % 2 else others[(i + 53) % len(others)])):
            out[S.SAMPLE_ID].append(sid)
            out[S.CAPTION].append(cap)
            out[S.NEG_CAPTION].append(neg)
            out[S.KIND].append(kind)
    return out


@pytest.fixture(scope="module")
def pairs(rows):
    return embed_pairs(TextEmbedder(), rows[S.SAMPLE_ID], rows[S.CAPTION], rows[S.NEG_CAPTION], rows[S.KIND])


def test_held_out_scorer_finds_an_artifact_and_not_a_real_caption(pairs):
    acc = accuracy_by_kind(held_out_margins(pairs, folds=5, seed=0), pairs.kinds)
    assert acc["artifact"] > 0.95
    assert 0.3 < acc["fair"] < 0.7
    assert 0.6 < acc["mixed"] < 0.9  # half give-aways, half chance


def test_refinement_leaves_every_kind_at_most_the_target_under_a_refit(pairs):
    result = refine(pairs, max_accuracy=0.6, folds=5, rounds=6, seed=0)
    after = accuracy_by_kind(result.after[result.keep], pairs.kinds[result.keep])
    assert result.converged and all(v <= 0.6 for v in after.values()), after
    kept = {k: int((result.keep & (pairs.kinds == k)).sum()) for k in ("artifact", "fair", "mixed")}
    assert kept["fair"] > 0.8 * N  # nothing to reject there
    assert kept["artifact"] < 0.3 * N  # nearly all give-aways go
    dropped_mixed = ~result.keep & (pairs.kinds == "mixed")
    # what was dropped from the mixed kind is mostly the give-away half (odd samples)
    odd = np.array([int(g) % 2 == 1 for g in pairs.groups])
    assert (dropped_mixed & odd).sum() > 2 * (dropped_mixed & ~odd).sum()


def test_step_writes_neg_blind_and_the_views_keep_only_what_it_kept(tmp_path, rows):
    ds = Dataset(tmp_path / "ds")
    n = len(rows[S.SAMPLE_ID])
    table = pa.table(
        {**rows, S.EDIT_SPAN: [None] * n, S.EDIT_FROM: [None] * n, S.EDIT_TO: [None] * n,
         S.GENERATOR: ["test"] * n, S.CHECKS: [[]] * n, S.SOURCE_ID: [None] * n}
    ).select(S.NEG_TEXT_SCHEMA.names).cast(S.NEG_TEXT_SCHEMA)
    ds.table(S.NEG_TEXT).write_shard("part-00000", table)
    ds.table(S.NEG_TEXT).write_manifest("negatives", {}, [S.RAW])
    report = steps.blind_refine(ds, {"max_accuracy": 0.6, "rounds": 6})
    dropped = report["dropped"]
    assert dropped.get("artifact:blind_too_easy", 0) > 0.7 * N and dropped.get("fair:blind_too_easy", 0) < 0.2 * N
    catalog = Catalog(ds)
    kept = catalog.query("SELECT kind, count(*) AS n FROM negatives GROUP BY kind").to_pylist()
    blind = {r["kind"]: r for r in catalog.query("SELECT * FROM blind_accuracy").to_pylist()}
    assert {r["kind"]: r["n"] for r in kept} == {k: blind[k]["kept"] for k in ("artifact", "fair", "mixed") if blind[k]["kept"]}
    assert blind["artifact"]["blind_accuracy_before"] > 0.95 and blind["artifact"]["candidates"] == N
    assert all(blind[k]["blind_accuracy_after"] is None or blind[k]["blind_accuracy_after"] <= 0.6 for k in blind)
    assert catalog.query("SELECT count(*) AS n FROM negatives WHERE blind_score IS NULL").to_pylist() == [{"n": 0}]
    reasons = catalog.query("SELECT reason, rows FROM drop_reasons WHERE table_name = 'neg_blind'").to_pylist()
    assert {"reason": "artifact:blind_too_easy", "rows": dropped["artifact:blind_too_easy"]} in reasons
    summary = build_summary(ds)
    assert {r["kind"] for r in summary["blind_accuracy"]} == {"artifact", "fair", "mixed", "all"}
    # unchanged inputs and config: kept as it is, not refitted
    again = steps.blind_refine(ds, {"max_accuracy": 0.6, "rounds": 6})
    assert again == report
    with pytest.raises(ConfigError, match="different negatives_blind config"):
        steps.blind_refine(ds, {"max_accuracy": 0.55, "rounds": 6})


@pytest.mark.parametrize("params, field", [({"max_accuracy": 0.3}, "max_accuracy"), ({"folds": 1}, "folds"), ({"rounds": 0}, "rounds"), ({"seed": "x"}, "seed")])
def test_bad_settings_are_named(params, field):
    with pytest.raises(ConfigError, match=f"negatives.blind.{field}"):
        BlindRefineStep(**params)


def test_refinement_needs_text_negatives(tmp_path):
    with pytest.raises(ConfigError, match="foil negatives"):
        steps.blind_refine(Dataset(tmp_path / "empty"), {})


def test_recipe_section_is_validated_and_the_demo_refines():
    from flows.recipe import load_recipe, parse_recipe

    assert load_recipe("demo").negatives_blind == {"max_accuracy": 0.6}
    assert parse_recipe({"negatives": {"blind": True}}).negatives_blind == {}
    assert parse_recipe({"negatives": {"seed": 1}}).negatives_blind is None
    with pytest.raises(ConfigError, match=r"negatives\.blind\.max_accuracy"):
        parse_recipe({"negatives": {"blind": {"max_accuracy": 2}}})
    with pytest.raises(ConfigError, match=r"negatives\.blind\.fold"):
        parse_recipe({"negatives": {"blind": {"fold": 5}}})
