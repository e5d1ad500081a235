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
from pipeline.demo.sample import emoji_items, emoji_sample_dir
from pipeline.negatives.text import (
    ADD_KINDS,
    ATTRIBUTE_KINDS,
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
    return Generator(English.shared())  # real spaCy model and Debian's WordNet, as the stage loads them


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
    assert row[S.GENERATOR] == "foil.wordnet@3"
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
    # every kind but a count and a skin tone, which that caption does not have
    assert set(out.filter(pa.compute.equal(out[S.SAMPLE_ID], "c"))[S.KIND].to_pylist()) == set(KINDS) - {"replace_count", "replace_skin_tone"}
    assert {k for k, v in stage.stats.counts.items() if k.startswith("made:")} == {f"made:{k}" for k in set(out[S.KIND].to_pylist())}
    assert stage.stats.dropped["replace_object:no_candidate"] == 1  # keycap 7 has no noun to replace
    assert all(c is None for c in out[S.SOURCE_ID].to_pylist())
    again = pa.Table.from_batches(list(TextNegativesStage(seed=1).run(iter([batch]))), schema=S.NEG_TEXT_SCHEMA)
    assert again.equals(out)
    other = pa.Table.from_batches(list(TextNegativesStage(seed=2).run(iter([batch]))), schema=S.NEG_TEXT_SCHEMA)
    assert other[S.NEG_CAPTION].to_pylist() != out[S.NEG_CAPTION].to_pylist()


def test_bad_kinds_and_seed_are_named():
    with pytest.raises(ConfigError, match="negatives.kinds: unknown kind 'replace_flavour'"):
        TextNegativesStage(kinds=["replace_flavour"])
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


# ---- the attribute kinds encoders miss, on the emoji sample's own names ----------------------
@pytest.fixture(scope="module")
def emoji_names() -> set[str]:
    return {i.caption for i in emoji_items(emoji_sample_dir())}


@pytest.fixture(scope="module")
def skin_tone_names() -> list[str]:
    """Names of the sample's skin-tone variants as Unicode writes them ("santa claus: dark skin tone")."""
    import json

    tones = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}
    entries = json.loads((emoji_sample_dir() / "emoji.json").read_text(encoding="utf-8"))
    names = []
    for e in entries:
        for code in (e.get("skin_variations") or {}):
            if code in tones and e.get("name"):
                names.append(f"{e['name'].lower()}: {tones[code]} skin tone")
    return names


def _all(gen, caption, kind, n=12):
    rows = [one(gen, caption, kind, str(i))[0] for i in range(n)]
    return {r[S.NEG_CAPTION] for r in rows if r}


@pytest.mark.parametrize(
    "caption, kind, expected",
    [
        ("blue heart", "replace_colour", {f"{c} heart" for c in L.COLOURS if c != "blue"}),
        ("man cook", "replace_gender", {"woman cook"}),
        ("older woman", "replace_age", {"younger woman", "older girl"}),
        ("man farmer", "replace_age", {"boy farmer"}),
        ("keycap ten", "replace_count", {f"keycap {c}" for c in L.COUNTS if c != "ten"}),
        ("clock face one oclock", "replace_count", {f"clock face {c} oclock" for c in L.COUNTS if c != "one"}),  # no "oclocks"
    ],
)
def test_attribute_kinds_swap_within_their_closed_set(gen, emoji_names, caption, kind, expected):
    assert caption in emoji_names  # a real caption of the sample
    made = _all(gen, caption, kind, 30)
    assert made and made <= expected, made - expected


def test_a_count_moves_its_noun_between_singular_and_plural(gen, emoji_names):
    assert "speaker with one sound wave" in emoji_names and "two men holding hands" in emoji_names
    for neg in _all(gen, "speaker with one sound wave", "replace_count"):
        assert neg.endswith(" sound waves") and neg.split()[2] in L.COUNTS[1:]
    for neg in _all(gen, "two men holding hands", "replace_count"):
        count = neg.split()[0]
        assert neg == f"{count} men holding hands" if count != "one" else neg == "one man holding hands"


def test_gender_swap_keeps_a_family_a_family(gen, emoji_names):
    caption = "family: man, woman, girl"
    assert caption in emoji_names
    row, rejected = one(gen, caption, "replace_gender")
    # man -> woman and woman -> man repeat a word already there; girl -> boy is the one left
    assert row[S.NEG_CAPTION] == "family: man, woman, boy" and rejected.get("already_in_caption", 0) >= 1
    assert {"not_synonym", "not_hypernym", "not_hyponym", "not_in_caption", "same_group:lexicon:gender"} <= set(row[S.CHECKS])


def test_skin_tone_phrases_trade_tones(gen, skin_tone_names):
    assert len(skin_tone_names) > 1000
    tones = set(L.SKIN_TONES)
    rnd = random.Random(0)
    for caption in rnd.sample(skin_tone_names, 25):
        row, _ = one(gen, caption, "replace_skin_tone", caption)
        base, tone = caption.rsplit(": ", 1)
        new_base, new_tone = row[S.NEG_CAPTION].rsplit(": ", 1)
        assert new_base == base and new_tone != tone
        assert new_tone.removesuffix(" skin tone") in tones and tone.removesuffix(" skin tone") in tones
        s, e = row[S.EDIT_SPAN]
        assert caption[:s] + row[S.EDIT_TO] + caption[e:] == row[S.NEG_CAPTION]
    assert one(gen, "waving hand", "replace_skin_tone") == (None, {"no_candidate": 1})


def test_attribute_kinds_cover_the_sample(gen, emoji_names):
    names = sorted(emoji_names)
    docs = list(gen.parse(names))
    made = Counter()
    for caption, doc in zip(names, docs):
        for kind in ATTRIBUTE_KINDS:
            if generate(gen, caption, doc, kind, caption, 0, {}):
                made[kind] += 1
    # the base names carry no skin tone; colours, counts, gender and age words are common
    assert made["replace_colour"] > 80 and made["replace_count"] > 20 and made["replace_gender"] > 150 and made["replace_age"] > 150, made
    assert made["replace_skin_tone"] == 0


# ---- badly-reading generations the issue quotes, fixed at their cause ------------------------
def test_a_word_takes_the_sense_named_by_it(gen):
    # WordNet's first sense of "skunk" is a person ("rotter"), whose siblings are insults
    for kind in ("replace_object", "add_object"):
        for new in {one(gen, "skunk", kind, str(i))[0][S.EDIT_TO] for i in range(10)}:
            word = new.split()[-1]
            assert gen.en.lexname(word, "n") == "noun.animal" or gen._headword_sense(word).lexname() == "noun.animal", new


def test_body_parts_are_not_added_and_not_taken_from_wordnet(gen):
    assert one(gen, "grinning face", "add_object")[0] is None  # was "grinning face and a breast"
    made = _all(gen, "smiling face with halo", "replace_object")
    # the face becomes another curated body part, or the halo another object; never a breast
    assert made and all(neg.split()[1] in L.OBJECTS["body"] for neg in made if neg.endswith(" with halo")), made
    assert not any("breast" in neg for neg in made)


def test_a_noun_tagged_as_a_verb_is_not_replaced_as_a_relation(gen):
    made = _all(gen, "face with open eyes and hand over mouth", "replace_relation", 20)
    assert made and not any("exchange" in neg for neg in made)
    assert all("hand" in neg for neg in made)  # the prepositions change, not the hand


def test_hyphenated_words_are_never_split(gen):
    assert one(gen, "left-pointing magnifying glass", "swap_attribute")[0] is None  # was "magnifying-pointing left glass"
    for kind in REPLACE_KINDS + ADD_KINDS:
        for neg in _all(gen, "left-pointing magnifying glass", kind, 6):
            assert "left-pointing" in neg, (kind, neg)


def test_an_added_object_does_not_go_inside_a_name(gen):
    made = _all(gen, "alarm clock twelve-thirty", "add_object", 6)  # was "... and a breast twelve-thirty"
    assert made and all(neg.startswith("alarm clock twelve-thirty and ") for neg in made), made


def test_wordnet_words_must_parse_as_what_they_replace(gen):
    doc = next(gen.parse(["a dog near a house"]))
    cand = Candidate([(2, 5, "run")], "wordnet", old="dog", new="run", pos="n")  # "a run near a house": a noun, fluent
    assert gen.check("a dog near a house", doc, cand)[0] is None
    cand = Candidate([(2, 5, "quickly")], "wordnet", old="dog", new="quickly", pos="n")
    assert gen.check("a dog near a house", doc, cand)[0] == "disfluent"


def test_a_process_loads_english_once_per_wordnet_source(gen, tmp_path):
    assert English.shared() is gen.en and English.shared() is English.shared()
    with pytest.raises(ConfigError, match="wordnet-base"):  # a bad source is not remembered as loaded
        English.shared(wordnet_source=tmp_path)
    with pytest.raises(ConfigError, match="wordnet-base"):
        English.shared(wordnet_source=tmp_path)
