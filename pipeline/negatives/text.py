"""Text hard negatives: fluent captions that differ from the positive in one minimal, explained way.

Kinds (SugarCrepe's seven, NegCLIP's four word-order shuffles, then five attribute kinds):

- replace_object / replace_attribute / replace_relation: one noun, adjective, or verb/preposition
  is replaced by a co-hyponym (a colour by a colour, an animal by an animal). The curated groups
  of pipeline/lexicon.py are tried first, then WordNet siblings. lemminflect puts the new word in
  the old one's form (mice, riding).
- swap_object / swap_attribute: two nouns (or two adjectives of different nouns) trade places.
- add_object: "... and a <noun>" after the last noun phrase, the noun being a co-hyponym of one
  already there. add_attribute: an adjective suited to the noun (mood for a person, colour for an
  artifact) before a noun that has none.
- shuffle_nouns_adjectives, shuffle_other_words, shuffle_trigrams, shuffle_within_trigrams.
- attribute kinds encoders are known to miss, each a closed set of pipeline/lexicon.py:
  replace_colour (red heart -> blue heart), replace_count (two hearts -> three hearts; one eye
  -> two eyes moves the noun's number), replace_gender (man cook -> woman cook), replace_age
  (older woman -> younger woman, man -> boy), replace_skin_tone ("waving hand: dark skin tone"
  -> "...: light skin tone", the modifier phrase as Unicode names write it).

Where edits read badly, the cause is fixed where the word is chosen: a WordNet noun takes the
visual sense that bears its own name (WordNet's first sense of "skunk" is a person, whose
siblings are "pharisee"); body parts come only from the curated group and are never added as
objects ("pig face and a breast"); a curated noun tagged as a base-form verb is no relation
("and hand over mouth" -> "exchange"); no edit touches part of a hyphenated word
("left-pointing magnifying glass" -> "magnifying-pointing left glass"); an added object goes
after a noun phrase only where the phrase ends ("clock face twelve-thirty").

Each kind yields candidates in an order drawn from (seed, sample_id, kind). Every candidate is
checked, the first valid one is kept, and each rejected one is counted by reason:

- identical: the same text as the positive;
- synonym / hypernym / hyponym: WordNet relates the new word to the old one;
- already_in_caption: the new word is already in the caption;
- repetition: the same word twice in a row;
- disfluent: a WordNet word that the negative's own parse does not read as the part of speech
  it was chosen as (a noun that became a verb or an adverb);
- keeps_meaning: swapping conjuncts ("cat and dog");
- no_parse: nothing to edit was found.

A caption with nothing to edit for a kind counts as `<kind>:no_candidate`.

Row columns: the edit as character spans of the positive (one span, or two for a swap) with the
replaced and new text, so that `negative == caption[:s] + to + caption[e:]`. Also the generator
(`foil.<source>@<version>`) and the checks it passed: `differs_from_positive` and
`no_repetition` always, `fluent` for WordNet words, `not_synonym`/`not_hypernym`/`not_hyponym` where a word was replaced by
(or added beside) another that WordNet knows, `not_in_caption` where a new word came in, then how
the candidate was made (`same_group:...`, `swapped:...`, `added:...`, the shuffle's kind).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow as pa

from pipeline.negatives import lexicon as L
from pipeline.core import schema as S
from pipeline.core.stage import ConfigError, Stage, register

VERSION = 3  # 3: word senses named by the word, no hyphenated or body-part edits, the fluency check, attribute kinds
REPLACE_KINDS = ("replace_object", "replace_attribute", "replace_relation")
SWAP_KINDS = ("swap_object", "swap_attribute")
ADD_KINDS = ("add_object", "add_attribute")
SHUFFLE_KINDS = ("shuffle_nouns_adjectives", "shuffle_other_words", "shuffle_trigrams", "shuffle_within_trigrams")
# Attribute kinds encoders are known to miss: kind -> (lexicon table word -> alternatives, group name).
ATTRIBUTE_TABLES: dict[str, tuple[dict[str, tuple[str, ...]], str]] = {
    "replace_colour": ({w: tuple(x for x in L.COLOURS if x != w) for w in L.COLOURS}, "colour"),
    "replace_count": ({w: tuple(x for x in L.COUNTS if x != w) for w in L.COUNTS}, "count"),
    "replace_gender": (L.GENDER, "gender"),
    "replace_age": (L.AGE, "age"),
}
SKIN_TONE_KIND = "replace_skin_tone"
ATTRIBUTE_KINDS = tuple(ATTRIBUTE_TABLES) + (SKIN_TONE_KIND,)
SUGARCREPE_KINDS = REPLACE_KINDS + SWAP_KINDS + ADD_KINDS
KINDS = SUGARCREPE_KINDS + SHUFFLE_KINDS + ATTRIBUTE_KINDS
# SugarCrepe's file names for its kinds (replace_att.json, ...).
SUGARCREPE_NAMES = {
    "replace_object": "replace_obj", "replace_attribute": "replace_att", "replace_relation": "replace_rel",
    "swap_object": "swap_obj", "swap_attribute": "swap_att", "add_object": "add_obj", "add_attribute": "add_att",
}
MAX_TRIES = 12  # candidates checked per caption and kind before giving up

_ATTRIBUTE_OF = L.index(L.ATTRIBUTES)
_OBJECT_OF = L.index(L.OBJECTS)
_RELATION_OF = L.index(L.RELATIONS)
_WORD = re.compile(r"[A-Za-z0-9']+")
_CONTENT_POS = {"NOUN", "PROPN", "ADJ", "VERB", "ADV", "NUM"}
_VISUAL_LEXNAMES = frozenset(L.ATTRIBUTES_FOR)  # kinds of nouns one can see (WordNet files)
# WordNet's siblings of a body part are body parts that read badly in a caption ("face" ->
# "breast"), so body parts come from the curated group only, and are never added as objects.
_WORDNET_OBJECT_LEXNAMES = _VISUAL_LEXNAMES - {"noun.body"}
_SKIN_TONE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, L.SKIN_TONES), key=len, reverse=True)) + r")(?= skin tones?\b)", re.IGNORECASE)
# Coarse parts of speech a new word may take in the negative's own parse (the fluency check).
_FLUENT_POS = {"n": {"NOUN", "PROPN"}, "a": {"ADJ", "VERB", "NOUN"}, "v": {"VERB", "AUX"}}


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


@dataclass
class Candidate:
    spans: list[tuple[int, int, str]]  # (start, end, new text) on the positive, non-overlapping
    source: str  # lexicon, wordnet, swap, insert, shuffle
    checks: list[str] = field(default_factory=list)
    old: str = ""  # the word replaced (for the WordNet relation checks)
    new: str = ""
    pos: str = ""  # WordNet part of speech of old/new: n, v, a

    def apply(self, caption: str) -> str:
        out, last = [], 0
        for start, end, text in sorted(self.spans):
            out += [caption[last:start], text]
            last = end
        return "".join(out) + caption[last:]


def _rng(seed: int, sample_id: str, kind: str) -> random.Random:
    digest = hashlib.blake2b(f"{seed}:{sample_id}:{kind}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def parse_form(caption: str) -> str:
    """The text spaCy parses: underscores as spaces, and Title Case lowered (spaCy reads
    capitalised words as proper nouns). Same length as the caption, so offsets carry over."""
    text = caption.replace("_", " ")
    ws = [w for w in text.split() if w[:1].isalpha()]
    if len(ws) > 1 and sum(w[:1].isupper() for w in ws) > len(ws) / 2 and len(text.lower()) == len(text):
        text = text.lower()
    return text


def _hyphenated(tok: Any) -> bool:
    """Part of a hyphenated word ("left" in "left-pointing"): editing it alone breaks the word."""
    doc = tok.doc
    before = tok.i > 0 and doc[tok.i - 1].text == "-" and not doc[tok.i - 1].whitespace_
    after = tok.i + 1 < len(doc) and doc[tok.i + 1].text == "-" and not tok.whitespace_
    return bool(before or after or "-" in tok.text)


def _orig(tok: Any) -> str:
    """The token as written in the caption (the parse may have lowered it)."""
    return tok.doc.user_data["caption"][tok.idx:tok.idx + len(tok.text)]


def _replacement_span(doc: Any, tok: Any, new: str) -> tuple[int, int, str]:
    """Replace `tok` by `new` (its case matched), fixing a preceding "a"/"an": a frog -> an owl."""
    text = _match_case(_orig(tok), new)
    prev = doc[tok.i - 1] if tok.i > 0 else None
    if prev is not None and prev.lower_ in ("a", "an") and prev.lower_ != _article(new):
        return prev.idx, tok.idx + len(tok.text), _match_case(_orig(prev), _article(new)) + prev.whitespace_ + text
    return tok.idx, tok.idx + len(tok.text), text


class Generator:
    """Makes candidates of every kind for parsed captions. Holds an `English` (spaCy + WordNet)."""

    def __init__(self, english: Any):
        self.en = english

    def parse(self, captions: list[str]) -> Iterator[Any]:
        """spaCy docs of the captions' parse forms, each remembering its caption."""
        for caption, doc in zip(captions, self.en.nlp.pipe((parse_form(c) for c in captions), batch_size=256)):
            doc.user_data["caption"] = caption
            yield doc

    # ---- the words a token may become -------------------------------------------------------
    def object_alternatives(self, lemma: str) -> list[tuple[str, str]]:
        """(other noun lemma, source:group): the curated group first, else WordNet siblings whose
        own most frequent sense is of the same kind (so "head" is no alternative to "dog")."""
        group = _OBJECT_OF.get(lemma)
        if group:
            return [(w, f"lexicon:{group}") for w in L.OBJECTS[group] if w != lemma]
        sense = self._headword_sense(lemma)
        if sense is None:
            return []
        lex = sense.lexname()
        related = self.en.related(lemma, "n")
        banned = {lemma} | related["synonym"] | related["hypernym"] | related["hyponym"]
        found: dict[str, None] = {}
        for parent in sense.hypernyms():
            for sibling in parent.hyponyms():
                if sibling == sense or sibling.lexname() != lex:
                    continue
                for name in (lem.name() for lem in sibling.lemmas()):
                    if name.isalpha() and name.islower() and name not in banned:
                        # the sibling's own word must mean that kind too ("head" is no alternative to "dog")
                        own = self._headword_sense(name)
                        if own is not None and own.lexname() == lex:
                            found.setdefault(name)
                        break
        return [(w, f"wordnet:{lex}") for w in sorted(found)]

    def _headword_sense(self, lemma: str) -> Any:
        """The first visual sense that bears the word's own name. WordNet's first sense of
        "skunk" is a person ("rotter", where skunk is a secondary name), whose siblings are
        "pharisee" and worse; the sense named skunk is the animal. None when no visual sense is
        named by the word: its siblings would be those of a wrong sense."""
        for syn in self.en.wn.synsets(lemma, "n"):
            if syn.name().split(".")[0].lower() == lemma and syn.lexname() in _WORDNET_OBJECT_LEXNAMES:
                return syn
        return None

    def _alternatives(self, token: Any, role: str) -> list[tuple[str, str]]:
        """(new word in the token's form, source:group) for a noun/adjective/relation token."""
        lemma, lower = self.en.lemma(token), token.lower_
        if role == "object":
            plural = token.tag_ == "NNS" and lower != lemma
            return [(self.en.inflect(w, "NNS") if plural else w, g) for w, g in self.object_alternatives(lemma)]
        if role == "attribute":
            group = _ATTRIBUTE_OF.get(lower)
            if group:
                return [(w, f"lexicon:{group}") for w in L.ATTRIBUTES[group] if w != lower and not L.same_meaning(w, lower)]
            antonyms = {a.name() for syn in self.en.wn.synsets(lower, "a")[:2] for lem in syn.lemmas() for a in lem.antonyms()}
            return [(w, "wordnet:antonym") for w in sorted(antonyms) if w.isalpha()]
        # relation: a preposition, or a verb (inflected like the original)
        if token.pos_ == "ADP":
            group = _RELATION_OF.get(lower)
            return [(w, f"lexicon:{group}") for w in L.RELATIONS[group] if w != lower] if group else []
        group = _RELATION_OF.get(lemma)
        if group:
            alts = [(w, f"lexicon:{group}") for w in L.RELATIONS[group] if w != lemma]
        else:
            alts = [(w, f"wordnet:{lex}") for w, lex in self.en.cohyponyms(lemma, "v", 5) if self.en.lexname(w, "v") == lex]
        return [(self.en.inflect(w, token.tag_), g) for w, g in alts]

    # ---- candidates per kind ------------------------------------------------------------------
    def _relation_phrases(self, doc: Any, rng: random.Random) -> tuple[list[Candidate], set[int]]:
        """Candidates replacing a multi-word spatial relation ("next to" -> "behind"), and the
        token positions those phrases cover (not to be replaced one word at a time)."""
        lowered = [t.lower_ for t in doc]
        found, covered = [], set()
        for phrase in L.RELATION_PHRASES:
            words_ = phrase.split()
            for i in range(len(lowered) - len(words_) + 1):
                if lowered[i : i + len(words_)] == words_:
                    covered.update(range(i, i + len(words_)))
                    start, end = doc[i].idx, doc[i + len(words_) - 1].idx + len(doc[i + len(words_) - 1].text)
                    alts = [w for w in L.RELATIONS["position"] + L.RELATION_PHRASES if w != phrase]
                    rng.shuffle(alts)
                    found += [Candidate([(start, end, _match_case(_orig(doc[i]), w))], "lexicon", ["same_group:lexicon:position"], new=w) for w in alts]
        return found, covered

    def _replace(self, doc: Any, role: str, rng: random.Random) -> Iterator[Candidate]:
        phrases, covered = self._relation_phrases(doc, rng) if role == "relation" else ([], set())
        tokens = [t for t in doc if t.is_alpha and _role(t) == role and t.i not in covered and not _hyphenated(t)]
        rng.shuffle(tokens)
        if phrases and (not tokens or rng.random() < 0.5):  # phrase or single words first, by the seed
            yield from phrases
            phrases = []
        for tok in tokens:
            alts = self._alternatives(tok, role)
            rng.shuffle(alts)
            for new, group in alts:
                source = group.split(":")[0]
                pos = {"object": "n", "attribute": "a"}.get(role, "v" if tok.pos_ == "VERB" else "r")
                yield Candidate(
                    [_replacement_span(doc, tok, new)], source,
                    [f"same_group:{group}"], old=self.en.lemma(tok) if pos != "a" else tok.lower_, new=new.lower(), pos=pos,
                )
        yield from phrases

    def _swap(self, doc: Any, role: str, rng: random.Random) -> Iterator[Candidate]:
        tokens = [t for t in doc if t.is_alpha and _role(t) == role and not _hyphenated(t)]
        pairs = [(a, b) for i, a in enumerate(tokens) for b in tokens[i + 1:] if a.lower_ != b.lower_]
        if role == "attribute":
            pairs = [(a, b) for a, b in pairs if a.head.i != b.head.i]  # adjectives of two different nouns
        rng.shuffle(pairs)
        for a, b in pairs:
            if _conjuncts(a, b):
                yield Candidate([], "swap", ["keeps_meaning"])
                continue
            spans = [_replacement_span(doc, a, _orig(b).lower()), _replacement_span(doc, b, _orig(a).lower())]
            yield Candidate(spans, "swap", [f"swapped:{role}s"])

    def _add_object(self, doc: Any, rng: random.Random) -> Iterator[Candidate]:
        chunks = [c for c in doc.noun_chunks if c.root.is_alpha and _role(c.root) == "object"]
        if not chunks:
            return
        # After the last noun phrase the sentence stays grammatical, unless the phrase runs on
        # ("clock face twelve-thirty"): then after the last word, not inside the name.
        end = chunks[-1].end_char
        rest = [t for t in doc if t.idx >= end and not t.is_punct and not t.is_space]
        if rest and rest[0].pos_ not in ("ADP", "VERB", "AUX", "CCONJ", "SCONJ", "ADV", "PRON", "DET"):
            end = rest[-1].idx + len(rest[-1].text)
        heads = [t for t in doc if t.is_alpha and _role(t) == "object" and not _hyphenated(t)]
        rng.shuffle(heads)
        for head in heads:
            # A body part alone is no new object in the scene ("pig face and a breast").
            alts = [(w, g) for w, g in self.object_alternatives(self.en.lemma(head)) if g not in ("lexicon:body", "wordnet:noun.body")]
            rng.shuffle(alts)
            for new, group in alts:
                yield Candidate([(end, end, f" and {_article(new)} {new}")], group.split(":")[0], [f"added:{group}"], old=self.en.lemma(head), new=new, pos="n")

    def _add_attribute(self, doc: Any, rng: random.Random) -> Iterator[Candidate]:
        def premodifiers(noun: Any) -> list[Any]:
            """The noun's compound modifiers with everything they govern ("martial arts" in
            "martial arts uniform"): an adjective goes before all of them."""
            return [t for c in noun.children if c.dep_ == "compound" and c.i < noun.i for t in c.subtree]

        nouns = [
            t for t in doc
            if t.is_alpha and _role(t) == "object" and not _hyphenated(t)
            and not any(c.dep_ == "amod" for c in t.children) and not any(m.dep_ == "amod" for m in premodifiers(t))
        ]
        rng.shuffle(nouns)
        for noun in nouns:
            lex = self.en.lexname(self.en.lemma(noun), "n")
            groups = L.ATTRIBUTES_FOR.get(lex or "", ())
            alts = [(w, g) for g in groups for w in L.ATTRIBUTES[g]]
            rng.shuffle(alts)
            # Insert before the noun's compound modifiers ("a [red] teddy bear"), and fix "a"/"an".
            first = min([noun] + premodifiers(noun), key=lambda t: t.i)
            det = doc[first.i - 1] if first.i > 0 and doc[first.i - 1].lower_ in ("a", "an") else None
            for adj, group in alts:
                if det is not None:  # "an apple" -> "a red apple"
                    span = (det.idx, first.idx, _match_case(_orig(det), _article(adj)) + det.whitespace_ + adj + " ")
                elif first.i == 0:  # "Dog running" -> "Black dog running"
                    span = (first.idx, first.idx + len(first.text), _match_case(_orig(first), adj) + " " + _orig(first).lower())
                else:
                    span = (first.idx, first.idx, adj + " ")
                yield Candidate([span], "lexicon", [f"added:lexicon:{group}", f"suits:{lex}"], new=adj, pos="a")

    def _shuffle(self, doc: Any, kind: str, rng: random.Random) -> Iterator[Candidate]:
        toks = [t for t in doc if not t.is_punct and not t.is_space]
        if kind in ("shuffle_nouns_adjectives", "shuffle_other_words"):
            want = kind == "shuffle_nouns_adjectives"
            chosen = [t for t in toks if (t.pos_ in ("NOUN", "PROPN", "ADJ")) == want]
            for _ in range(4):
                texts = [_orig(t) for t in chosen]
                rng.shuffle(texts)
                yield Candidate([(t.idx, t.idx + len(t.text), new) for t, new in zip(chosen, texts) if new != _orig(t)], "shuffle", [kind])
            return
        if not toks:
            return
        start, end = toks[0].idx, toks[-1].idx + len(toks[-1].text)
        trigrams = [toks[i:i + 3] for i in range(0, len(toks), 3)]
        for _ in range(4):
            if kind == "shuffle_trigrams":
                order = trigrams[:]
                rng.shuffle(order)
                parts = [_orig(t) for tri in order for t in tri]
            else:
                parts = []
                for tri in trigrams:
                    inner = [_orig(t) for t in tri]
                    rng.shuffle(inner)
                    parts += inner
            yield Candidate([(start, end, " ".join(parts))], "shuffle", [kind])

    def _replace_attribute_word(self, doc: Any, kind: str, rng: random.Random) -> Iterator[Candidate]:
        """A colour, count, gender or age word replaced by another of its closed set. A count
        moving between one and more also moves its noun's number (one eye -> two eyes)."""
        table, group = ATTRIBUTE_TABLES[kind]
        tokens = [t for t in doc if t.is_alpha and t.lower_ in table and not _hyphenated(t)]
        rng.shuffle(tokens)
        for tok in tokens:
            alts = list(table[tok.lower_])
            rng.shuffle(alts)
            for new in alts:
                spans = [_replacement_span(doc, tok, new)]
                head = tok.head if tok.dep_ == "nummod" and tok.head.pos_ == "NOUN" and not _hyphenated(tok.head) else None
                if kind == "replace_count" and head is not None and head.lower_ not in L.COUNT_INVARIANT and (tok.lower_ == "one") != (new == "one"):
                    form = self.en.inflect(self.en.lemma(head), "NN" if new == "one" else "NNS")
                    spans.append((head.idx, head.idx + len(head.text), _match_case(_orig(head), form)))
                # WordNet relates ages by design (a girl is a young woman, a boy a young man), yet
                # the images differ, so the closed set, not WordNet, decides; counts are not in WordNet.
                pos = "" if kind in ("replace_count", "replace_age") else ("a" if tok.pos_ == "ADJ" else "n")
                lemma_old = tok.lower_ if pos != "n" else self.en.lemma(tok)
                yield Candidate(spans, "lexicon", [f"same_group:lexicon:{group}"], old=lemma_old if pos else "", new=new, pos=pos)

    def _replace_skin_tone(self, caption: str, rng: random.Random) -> Iterator[Candidate]:
        """"X: dark skin tone" -> "X: light skin tone": the modifier phrase, found in the text
        (the tones are hyphenated, which the parser splits)."""
        matches = list(_SKIN_TONE.finditer(caption))
        rng.shuffle(matches)
        for m in matches:
            alts = [t for t in L.SKIN_TONES if t != m.group(1).lower()]
            rng.shuffle(alts)
            for tone in alts:
                # No `new`: another phrase of the caption may already name this tone (a couple's two skin tones).
                yield Candidate([(m.start(1), m.end(1), _match_case(m.group(1), tone))], "lexicon", ["same_group:lexicon:skin_tone"])

    def candidates(self, doc: Any, kind: str, rng: random.Random) -> Iterator[Candidate]:
        if kind in ATTRIBUTE_TABLES:
            return self._replace_attribute_word(doc, kind, rng)
        if kind == SKIN_TONE_KIND:
            return self._replace_skin_tone(doc.user_data["caption"], rng)
        if kind in REPLACE_KINDS:
            return self._replace(doc, kind.split("_")[1], rng)
        if kind in SWAP_KINDS:
            return self._swap(doc, kind.split("_")[1], rng)
        if kind == "add_object":
            return self._add_object(doc, rng)
        if kind == "add_attribute":
            return self._add_attribute(doc, rng)
        return self._shuffle(doc, kind, rng)

    # ---- validity ---------------------------------------------------------------------------
    def check(self, caption: str, doc: Any, cand: Candidate) -> tuple[str | None, str, list[str]]:
        """(rejection reason or None, negative caption, the checks that ran and passed). Which
        checks run depends on the candidate: only a replaced word can be a WordNet relative of
        the old one, and only a new word can already be in the caption."""
        if "keeps_meaning" in cand.checks:
            return "keeps_meaning", caption, []
        negative = cand.apply(caption)
        if not cand.spans or negative.strip().lower() == caption.strip().lower():
            return "identical", negative, []
        passed = ["differs_from_positive"]
        if cand.pos in ("n", "v", "a") and cand.old:
            related = self.en.related(cand.old, cand.pos)
            for relation in ("synonym", "hypernym", "hyponym"):
                if cand.new in related[relation]:
                    return relation, negative, passed
                passed.append(f"not_{relation}")
        if cand.new and cand.source != "shuffle":
            present = {t.lower_ for t in doc} | {self.en.lemma(t) for t in doc}
            if cand.new in present or cand.new.split()[-1] in present:
                return "already_in_caption", negative, passed
            passed.append("not_in_caption")
        neg_words = words(negative)
        if any(a == b for a, b in zip(neg_words, neg_words[1:])) and not any(a == b for a, b in zip(words(caption), words(caption)[1:])):
            return "repetition", negative, passed
        passed.append("no_repetition")
        if cand.source == "wordnet" and cand.new and cand.pos in _FLUENT_POS:
            if not self.fluent(negative, cand):
                return "disfluent", negative, passed
            passed.append("fluent")
        return None, negative, passed

    def fluent(self, negative: str, cand: Candidate) -> bool:
        """The negative parsed anew reads the new word as the part of speech it was chosen as
        (a noun stays a noun). WordNet's words come with senses and parts of speech the caption
        may not have ("hand" -> "exchange" as a verb, in "and hand over mouth"); the curated
        lexicon's do not need the check."""
        start = sorted(cand.spans)[0][0]
        doc = self.en.nlp(parse_form(negative))
        new = cand.new.split()[-1].lower()
        toks = [t for t in doc if t.idx >= start and t.lower_ == new] or [t for t in doc if t.lower_ == new]
        return bool(toks) and toks[0].pos_ in _FLUENT_POS[cand.pos]


def _role(token: Any) -> str | None:
    if token.pos_ == "NOUN" and token.dep_ != "compound":
        return "object"
    if token.pos_ == "ADJ":
        return "attribute"
    if token.pos_ == "ADP" and token.lower_ in _RELATION_OF:
        return "relation"
    if token.pos_ == "VERB":
        # A curated noun in a verb's base form is most often a mis-tagged noun ("and hand over
        # mouth"), whose verb siblings ("exchange") make no sense there.
        if token.tag_ in ("VB", "VBP") and token.lower_ in _OBJECT_OF:
            return None
        return "relation"
    return None


def _conjuncts(a: Any, b: Any) -> bool:
    """'cat and dog' -> 'dog and cat' says the same thing."""
    return (b.dep_ == "conj" and b.head.i == a.i) or (a.dep_ == "conj" and a.head.i == b.i)


def negative_row(caption: str, kind: str, cand: Candidate, negative: str, passed: list[str]) -> dict[str, Any]:
    """The `neg_text` row of a valid candidate; `passed` are the checks `Generator.check` ran."""
    spans = sorted(cand.spans)
    return {
        S.KIND: kind,
        S.NEG_CAPTION: negative,
        S.EDIT_SPAN: [x for s, e, _ in spans for x in (s, e)],
        S.EDIT_FROM: "|".join(caption[s:e] for s, e, _ in spans) if cand.source != "shuffle" else caption,
        S.EDIT_TO: "|".join(t for _, _, t in spans) if cand.source != "shuffle" else negative,
        S.GENERATOR: f"foil.{cand.source}@{VERSION}",
        S.CHECKS: passed + cand.checks,
        S.SOURCE_ID: None,
    }


def generate(generator: Generator, caption: str, doc: Any, kind: str, sample_id: str, seed: int, rejected: dict[str, int]) -> dict[str, Any] | None:
    """The first valid negative of `kind`, or None; rejected candidates are added to `rejected`."""
    if not any(t.is_alpha for t in doc):
        rejected["no_parse"] = rejected.get("no_parse", 0) + 1
        return None
    tried = 0
    for cand in generator.candidates(doc, kind, _rng(seed, sample_id, kind)):
        reason, negative, passed = generator.check(caption, doc, cand)
        if reason is None:
            return negative_row(caption, kind, cand, negative, passed)
        rejected[reason] = rejected.get(reason, 0) + 1
        tried += 1
        if tried >= MAX_TRIES:
            break
    if tried == 0:
        rejected["no_candidate"] = rejected.get("no_candidate", 0) + 1
    return None


@register
class TextNegativesStage(Stage):
    name = "negatives"
    output_schema = S.NEG_TEXT_SCHEMA
    input_columns = [S.SAMPLE_ID, S.CAPTION]
    reuse_instance = True  # spaCy and WordNet load once per worker (~6 s)

    def __init__(self, kinds: list[str] | tuple[str, ...] = KINDS, seed: int = 0):
        super().__init__()
        if isinstance(kinds, str) or not isinstance(kinds, (list, tuple)) or not kinds:
            raise ConfigError(f"negatives.kinds: must be a non-empty list of kinds, got {kinds!r}")
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ConfigError(f"negatives.kinds: unknown kind {unknown[0]!r}; known: {', '.join(KINDS)}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"negatives.seed: must be an integer, got {seed!r}")
        self.kinds = tuple(kinds)
        self.seed = seed
        self._generator: Generator | None = None

    def config(self) -> dict[str, Any]:
        return {"kinds": list(self.kinds), "seed": self.seed, "generator": f"foil.negatives_text@{VERSION}"}

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        if self._generator is None:
            from pipeline.models.language import English

            self._generator = Generator(English.shared())
            self.count("model_loads")
        out: dict[str, list[Any]] = {name: [] for name in S.NEG_TEXT_SCHEMA.names}
        ids = batch.column(S.SAMPLE_ID).to_pylist()
        captions = [c or "" for c in batch.column(S.CAPTION).to_pylist()]
        for sid, caption, doc in zip(ids, captions, self._generator.parse(captions)):
            for kind in self.kinds:
                rejected: dict[str, int] = {}
                row = generate(self._generator, caption, doc, kind, sid, self.seed, rejected)
                for reason, n in rejected.items():
                    self.drop(f"{kind}:{reason}", n)
                if row is None:
                    continue
                self.count(f"made:{kind}")
                out[S.SAMPLE_ID].append(sid)
                out[S.CAPTION].append(caption)
                for key, value in row.items():
                    out[key].append(value)
        if out[S.SAMPLE_ID]:
            yield pa.RecordBatch.from_pydict(out, schema=S.NEG_TEXT_SCHEMA)
