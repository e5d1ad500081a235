from __future__ import annotations

import random
from collections import Counter

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.negatives import lexicon as L
from pipeline.core import schema as S
from pipeline.models.language import English
from pipeline.negatives.text import (
    ADD_KINDS,
    KINDS,
    REPLACE_KINDS,
    SHUFFLE_KINDS,
    SWAP_KINDS,
    Candidate,
    Generator,
    TextNegativesStage,
    generate,
    words,
)
from pipeline.core.stage import ConfigError

ARTICLES = {"a", "an"}


@pytest.fixture(scope="module")
def gen() -> Generator:
    return Generator(English())  # real spaCy model and Debian's WordNet


def one(gen: Generator, caption: str, kind: str, sid: str = "s", seed: int = 0) -> tuple[dict | None, dict]:
    rejected: dict[str, int] = {}
    doc = next(gen.parse([caption]))
    return generate(gen, caption, doc, kind, sid, seed, rejected), rejected


def content(text: str) -> list[str]:
    return [w for w in words(text) if w not in ARTICLES]


def test_replace_attribute_takes_a_colour_for_a_colour(gen):
    for sid in ("a", "b", "c", "d"):
        row, _ = one(gen, "A red apple on a table.", "replace_attribute", sid)
        colour = row[S.EDIT_TO].split()[-1]
        assert colour in L.ATTRIBUTES["colour"] and colour != "red"
        article = "An" if colour[0] in "aeiou" else "A"
        assert row[S.NEG_CAPTION] == f"{article} {colour} apple on a table."
        assert row[S.EDIT_SPAN] == ([2, 5] if article == "A" else [0, 5])  # "A red" -> "An orange"
        assert "same_group:lexicon:colour" in row[S.CHECKS]


def test_replace_object_fixes_the_article_and_keeps_the_number(gen):
    seen = set()
    for sid in range(40):
        row, _ = one(gen, "A frog.", "replace_object", str(sid))
        art, noun = row[S.NEG_CAPTION].rstrip(".").split()
        assert art == ("An" if noun[0] in "aeiou" else "A")
        assert noun in L.OBJECTS["animal"] and noun != "frog"
        seen.add(noun)
    assert len(seen) > 5
    row, _ = one(gen, "Two dogs in a park", "replace_object", "p")
    assert row[S.EDIT_FROM] in ("dogs", "park")
    if row[S.EDIT_FROM] == "dogs":
        assert row[S.EDIT_TO].endswith("s") or row[S.EDIT_TO] in ("mice", "sheep", "fish")


def test_wordnet_extends_the_lexicon_with_siblings_of_the_same_kind(gen):
    row, _ = one(gen, "A hippopotamus.", "replace_object")  # not in the curated groups
    assert row[S.GENERATOR] == "foil.wordnet@2"
    assert gen.en.lexname(row[S.EDIT_TO].lower(), "n") == "noun.animal"


def test_relation_phrases_are_replaced_whole(gen):
    seen = set()
    for sid in range(12):
        row, _ = one(gen, "A dog in front of a house", "replace_relation", str(sid))
        assert row[S.EDIT_FROM] == "in front of" and row[S.EDIT_TO] in L.RELATIONS["position"] + L.RELATION_PHRASES
        seen.add(row[S.EDIT_TO])
    assert len(seen) > 2


def test_relations_replace_prepositions_and_inflect_verbs(gen):
    seen = Counter()
    for sid in range(30):
        row, _ = one(gen, "A cat sitting on a table.", "replace_relation", str(sid))
        seen[row[S.EDIT_FROM]] += 1
        if row[S.EDIT_FROM] == "sitting":
            assert row[S.EDIT_TO].endswith("ing")  # lemminflect kept the form
        else:
            assert row[S.EDIT_TO] in L.RELATIONS["position"]
    assert set(seen) == {"sitting", "on"}


def test_swaps_trade_places_and_skip_conjuncts(gen):
    row, _ = one(gen, "A small white house with a black door.", "swap_attribute")
    assert row[S.NEG_CAPTION] in ("A small black house with a white door.", "A black white house with a small door.")
    row, rejected = one(gen, "cat and dog", "swap_object")
    assert row is None and rejected == {"keeps_meaning": 1}


def test_add_kinds_insert_one_word(gen):
    row, _ = one(gen, "A girl eating an apple.", "add_object")
    assert row[S.NEG_CAPTION].startswith("A girl eating an apple and a")
    row, _ = one(gen, "A penguin.", "add_attribute")
    assert row[S.NEG_CAPTION].split()[1] in [w for g in L.ATTRIBUTES_FOR["noun.animal"] for w in L.ATTRIBUTES[g]]


def test_wordnet_relations_are_rejected_by_name(gen):
    doc = next(gen.parse(["a car"]))
    for new, reason in (("automobile", "synonym"), ("vehicle", "hypernym"), ("cab", "hyponym")):
        cand = Candidate([(2, 5, new)], "wordnet", old="car", new=new, pos="n")
        assert gen.check("a car", doc, cand)[0] == reason
    doc = next(gen.parse(["a red car"]))
    assert gen.check("a red car", doc, Candidate([(6, 9, "red")], "lexicon", old="car", new="ball", pos="n"))[0] == "repetition"
    assert gen.check("a red car", doc, Candidate([(2, 5, "red")], "lexicon", old="car", new="red", pos="a"))[0] == "identical"


@pytest.mark.parametrize(
    "caption, kind, wordnet, in_caption",
    [
        ("A frog.", "replace_object", True, True),
        ("A red apple on a table.", "replace_attribute", True, True),
        ("A cat sitting.", "replace_relation", True, True),  # a verb: WordNet relates verbs
        ("A dog in front of a house", "replace_relation", False, True),  # a phrase: no WordNet entry
        ("A girl eating an apple.", "add_object", True, True),
        ("A penguin.", "add_attribute", False, True),  # nothing replaced, nothing to relate to
        ("A small white house with a black door.", "swap_attribute", False, False),  # no new word
        ("A red apple on a wooden table.", "shuffle_trigrams", False, False),
        ("A red apple on a wooden table.", "shuffle_nouns_adjectives", False, False),
    ],
)
def test_checks_name_exactly_the_checks_that_ran(gen, caption, kind, wordnet, in_caption):
    row, _ = one(gen, caption, kind)
    checks = row[S.CHECKS]
    assert checks[:1] == ["differs_from_positive"] and "no_repetition" in checks
    assert [c for c in ("not_synonym", "not_hypernym", "not_hyponym") if c in checks] == (["not_synonym", "not_hypernym", "not_hyponym"] if wordnet else [])
    assert ("not_in_caption" in checks) == in_caption
    assert len(checks) == len(set(checks))


def test_nothing_to_edit_is_reported_not_invented(gen):
    assert one(gen, "keycap 7", "swap_attribute") == (None, {"no_candidate": 1})
    assert one(gen, "... !!", "replace_object") == (None, {"no_parse": 1})


# Captions built from the lexicon's words and a few function words, in sentence-like orders.
_nouns = sorted({w for ws in L.OBJECTS.values() for w in ws})
_adjs = sorted({w for ws in L.ATTRIBUTES.values() for w in ws})
_phrase = st.tuples(st.sampled_from(["a", "the", "two", ""]), st.sampled_from(_adjs + [""]), st.sampled_from(_nouns))
_captions = st.builds(
    lambda p1, rel, p2: " ".join(w for w in (*p1, *rel.split(), *p2) if w),
    _phrase,
    st.sampled_from(["on", "under", "with", "next to", "in front of", "holding", "riding", "and", "sitting on", "eating"]),
    _phrase,
)


def _changed(before: list[str], after: list[str]) -> tuple[list[str], list[str]]:
    """The differing middle of two word lists (common prefix and suffix removed)."""
    i = 0
    while i < min(len(before), len(after)) and before[i] == after[i]:
        i += 1
    j = 0
    while j < min(len(before), len(after)) - i and before[-1 - j] == after[-1 - j]:
        j += 1
    return before[i : len(before) - j], after[i : len(after) - j]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(caption=_captions, sid=st.text(min_size=1, max_size=6), seed=st.integers(0, 5))
def test_properties_of_every_kind(gen, caption, sid, seed):
    doc = next(gen.parse([caption]))
    for kind in KINDS:
        row = generate(gen, caption, doc, kind, sid, seed, {})
        if row is None:
            continue
        neg = row[S.NEG_CAPTION]
        assert neg.strip().lower() != caption.strip().lower()  # never the positive itself
        if kind in SWAP_KINDS or kind in SHUFFLE_KINDS:  # the same words, in another order
            assert Counter(content(neg)) == Counter(content(caption))
        if kind in REPLACE_KINDS:  # exactly one content word (or one relation phrase) changed
            old, new = _changed(content(caption), content(neg))
            phrases = [p.split() for p in L.RELATION_PHRASES]
            assert (len(old) == 1 or old in phrases) and (len(new) == 1 or new in phrases), (old, new)
        if kind in ADD_KINDS:  # exactly one content word added
            added = Counter(content(neg)) - Counter(content(caption))
            assert sum(added.values()) == (2 if kind == "add_object" else 1)  # "and" + the object
            assert not Counter(content(caption)) - Counter(content(neg))
            if kind == "add_object":
                assert "and" in added
        if len(row[S.EDIT_SPAN]) == 2 and kind not in SHUFFLE_KINDS:  # the edit reproduces the negative
            s, e = row[S.EDIT_SPAN]
            assert caption[:s] + row[S.EDIT_TO] + caption[e:] == neg
        assert generate(gen, caption, doc, kind, sid, seed, {}) == row  # a fixed seed reproduces it


def test_stage_counts_made_and_rejected_by_reason_and_is_deterministic():
    captions = ["A red apple on a table.", "keycap 7", "A man riding a brown horse next to a red car."]
    batch = pa.RecordBatch.from_pydict({S.SAMPLE_ID: ["a", "b", "c"], S.CAPTION: captions})
    stage = TextNegativesStage(seed=1)
    out = pa.Table.from_batches(list(stage.run(iter([batch]))), schema=S.NEG_TEXT_SCHEMA)
    assert set(out[S.SAMPLE_ID].to_pylist()) == {"a", "b", "c"}
    assert set(out.filter(pa.compute.equal(out[S.SAMPLE_ID], "c"))[S.KIND].to_pylist()) == set(KINDS)
    assert {k for k, v in stage.stats.counts.items() if k.startswith("made:")} == {f"made:{k}" for k in set(out[S.KIND].to_pylist())}
    assert stage.stats.dropped["replace_object:no_candidate"] == 1  # keycap 7 has no noun to replace
    assert all(c is None for c in out[S.SOURCE_ID].to_pylist())
    again = pa.Table.from_batches(list(TextNegativesStage(seed=1).run(iter([batch]))), schema=S.NEG_TEXT_SCHEMA)
    assert again.equals(out)
    other = pa.Table.from_batches(list(TextNegativesStage(seed=2).run(iter([batch]))), schema=S.NEG_TEXT_SCHEMA)
    assert other[S.NEG_CAPTION].to_pylist() != out[S.NEG_CAPTION].to_pylist()


def test_bad_kinds_and_seed_are_named():
    with pytest.raises(ConfigError, match="negatives.kinds: unknown kind 'replace_colour'"):
        TextNegativesStage(kinds=["replace_colour"])
    with pytest.raises(ConfigError, match="negatives.seed"):
        TextNegativesStage(seed="x")


def test_missing_wordnet_says_how_to_install_it(tmp_path):
    with pytest.raises(ConfigError, match="wordnet-base"):
        English(wordnet_source=tmp_path)


def test_seeded_choice_spreads_over_kinds_and_candidates(gen):
    picks = {one(gen, "A red apple on a wooden table.", "replace_object", str(i))[0][S.EDIT_FROM] for i in range(30)}
    assert picks == {"apple", "table"}
    rnd = random.Random(0)
    assert len({one(gen, "A dog.", "replace_object", str(rnd.random()))[0][S.EDIT_TO] for _ in range(20)}) > 5
