from __future__ import annotations

import re

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import schema as S
from pipeline.negatives_text import ATTRIBUTES, OBJECTS, TextNegativesStage, make_negative

WORD = re.compile(r"[A-Za-z]+")
_groups = {**{w: g for g, ws in ATTRIBUTES.items() for w in ws}, **{w: g for g, ws in OBJECTS.items() for w in ws}}
_vocab = sorted(_groups) + ["a", "the", "with", "on", "small", "face", "emoji", "of"]


def test_replace_attribute_swaps_a_colour_for_another_colour():
    neg = make_negative("red apple", "replace_attribute", "id1", seed=0)
    assert neg[S.EDIT_FROM] == "red" and neg[S.EDIT_TO] in ATTRIBUTES["colour"] and neg[S.EDIT_TO] != "red"
    assert neg[S.NEG_CAPTION] == f"{neg[S.EDIT_TO]} apple"
    assert neg[S.EDIT_SPAN] == [0, 3]


def test_replace_object_stays_in_the_objects_group():
    neg = make_negative("woman cook with a dog", "replace_object", "id2", seed=3)
    group = _groups[neg[S.EDIT_FROM].lower()]
    assert _groups[neg[S.EDIT_TO].lower()] == group


def test_no_candidate_is_reported_not_invented():
    assert make_negative("keycap 7", "replace_object", "id3", seed=0) == "no_candidate_word"


def test_words_already_in_the_caption_are_not_used_as_replacements():
    for sid in range(50):
        neg = make_negative("red and orange heart", "replace_attribute", str(sid), seed=0)
        assert neg[S.EDIT_TO] not in ("red", "orange")


@settings(max_examples=200, deadline=None)
@given(words=st.lists(st.sampled_from(_vocab), min_size=1, max_size=8), sid=st.text(min_size=1, max_size=8), seed=st.integers(0, 10))
def test_properties_of_replacements(words, sid, seed):
    caption = " ".join(words)
    for kind in ("replace_attribute", "replace_object"):
        neg = make_negative(caption, kind, sid, seed)
        if isinstance(neg, str):
            continue
        before, after = WORD.findall(caption), WORD.findall(neg[S.NEG_CAPTION])
        assert len(before) == len(after)
        changed = [(a, b) for a, b in zip(before, after) if a != b]
        assert len(changed) == 1  # exactly one content word replaced
        assert neg[S.NEG_CAPTION] != caption
        assert _groups[changed[0][0].lower()] == _groups[changed[0][1].lower()]
        assert make_negative(caption, kind, sid, seed) == neg  # a fixed seed reproduces it


def test_stage_counts_made_and_rejected_by_reason():
    batch = pa.RecordBatch.from_pydict({S.SAMPLE_ID: ["a", "b"], S.CAPTION: ["red apple", "keycap 7"]})
    stage = TextNegativesStage(seed=1)
    out = pa.Table.from_batches(list(stage.run(iter([batch]))), schema=S.NEG_TEXT_SCHEMA)
    assert sorted(out[S.KIND].to_pylist()) == ["replace_attribute", "replace_object"]
    assert set(out[S.SAMPLE_ID].to_pylist()) == {"a"}
    assert stage.stats.dropped == {"replace_attribute:no_candidate_word": 1, "replace_object:no_candidate_word": 1}
    assert all(g.startswith("foil.lexicon_replace") for g in out[S.GENERATOR].to_pylist())
