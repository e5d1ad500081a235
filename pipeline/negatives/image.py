"""Image hard negatives: for a text negative that changes one thing, an image that shows it.

A text negative ("a red apple" -> "a green apple") tells the model which caption is wrong; an
image negative shows it the picture that goes with the wrong caption, so the minimal pair is
seen from both sides. This module holds what every method shares, and the `mined` method:

- mined: a real curated image whose caption *is* the negative caption after normalisation (case,
  whitespace, punctuation), else the curated image nearest to the negative caption's text
  embedding, if its cosine is at least `min_similarity`. Never the positive's own image, nor its
  duplicate (table `duplicates`, same sha256). No GPU; real images, so these rows feed training.
- p2p / inpaint (pipeline/negatives/image_generate.py): diffusion-made, on per-shard workers.

Every row passes validity checks before it is written, each counted by reason when it fails
(`<method>:<check>` in the step's drop counters, so in `drop_reasons`) and listed in the row's
`checks` when it ran:

- margin: the image matches the negative caption better than the positive one, by `margin`
  (the dataset's embed model: `score_negative`, `score_positive`);
- area: the changed area (box or mask) is a fraction of the image within [min_area, max_area];
- outside_mask: for inpaint, every pixel outside the mask equals the source.

Table `neg_image` (schema.NEG_IMAGE_SCHEMA) is committed by one whole-dataset step: the mined
rows, plus the committed rows of the generated tables (`neg_image_p2p`, `neg_image_inpaint`)
when those methods are asked for, so readers find every image negative in one table.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from pipeline.core import schema as S
from pipeline.core.catalog import Catalog
from pipeline.core.runners import run_dataset_step
from pipeline.core.stage import ConfigError, DatasetStep
from pipeline.core.store import Dataset
from pipeline.embed.embed import embedding_matrix
from pipeline.negatives.text import KINDS as TEXT_KINDS
from pipeline.negatives.text import SHUFFLE_KINDS

MINED, P2P, INPAINT = "mined", "p2p", "inpaint"
METHODS = (MINED, P2P, INPAINT)
GENERATED_METHODS = (P2P, INPAINT)
# The table each diffusion method writes shard by shard before `neg_image` gathers them.
GENERATED_TABLES = {P2P: "neg_image_p2p", INPAINT: "neg_image_inpaint"}
# Kinds whose negative caption changes one visible thing: every text kind but the word-order
# shuffles (an image cannot show "table a on cat").
IMAGE_KINDS = tuple(k for k in TEXT_KINDS if k not in SHUFFLE_KINDS)
DEFAULT_KINDS = IMAGE_KINDS
_PUNCTUATION = re.compile(r"[^\w\s]+")


def normalise_caption(text: str | None) -> str:
    """Case, whitespace and punctuation do not make two captions different
    ("Man cook: dark skin tone" == "man cook dark skin tone")."""
    return " ".join(_PUNCTUATION.sub(" ", (text or "").lower()).split())


# -- validity checks --------------------------------------------------------------------------
@dataclass
class Evidence:
    """What the checks look at for one candidate image negative."""

    score_negative: float | None = None  # cosine(image, negative caption)
    score_positive: float | None = None  # cosine(image, positive caption)
    area: float | None = None  # changed fraction of the image (box or mask)
    outside_change: float | None = None  # largest |edited - source| outside the mask, 0..255


@dataclass(frozen=True)
class CheckLimits:
    margin: float | None = 0.0  # None: no margin check
    min_area: float = 0.0
    max_area: float = 1.0


def _check_margin(ev: Evidence, limits: CheckLimits) -> tuple[bool, str]:
    gap = (ev.score_negative or 0.0) - (ev.score_positive or 0.0)
    return gap >= limits.margin, f"margin:{gap:.3f}>={limits.margin}"


def _check_area(ev: Evidence, limits: CheckLimits) -> tuple[bool, str]:
    area = ev.area if ev.area is not None else 0.0
    return limits.min_area <= area <= limits.max_area, f"area:{area:.3f} in [{limits.min_area}, {limits.max_area}]"


def _check_outside_mask(ev: Evidence, limits: CheckLimits) -> tuple[bool, str]:
    change = ev.outside_change if ev.outside_change is not None else float("inf")
    return change == 0, "outside_mask:unchanged"


CHECKS: dict[str, Callable[[Evidence, CheckLimits], tuple[bool, str]]] = {
    "margin": _check_margin,
    "area": _check_area,
    "outside_mask": _check_outside_mask,
}
# Which checks each method's rows go through, in order; the first failure is the drop reason.
METHOD_CHECKS = {MINED: ("margin",), P2P: ("margin", "area"), INPAINT: ("margin", "area", "outside_mask")}


def run_checks(method: str, ev: Evidence, limits: CheckLimits) -> tuple[str | None, list[str]]:
    """(the first failed check's name or None, labels of the checks passed)."""
    passed = []
    for name in METHOD_CHECKS[method]:
        if name == "margin" and limits.margin is None:
            continue
        ok, label = CHECKS[name](ev, limits)
        if not ok:
            return name, passed
        passed.append(label)
    return None, passed


def changed_area(source: np.ndarray, edited: np.ndarray, threshold: int = 16) -> tuple[float, list[int] | None]:
    """Fraction of pixels that differ by more than `threshold` (any channel, 0..255) between two
    same-size images, and the box [x0, y0, x1, y1] around them (None when nothing changed)."""
    diff = np.abs(source.astype(np.int16) - edited.astype(np.int16)).max(axis=-1) > threshold
    if not diff.any():
        return 0.0, None
    ys, xs = np.nonzero(diff)
    return float(diff.mean()), [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


# -- scoring with the dataset's embed model ---------------------------------------------------
class EmbedScorer:
    """The model that made the dataset's embeddings (named in the embed stage's manifest), loaded
    on first use, to score captions and images in the same space as table `embeddings`."""

    def __init__(self, model: str, pretrained: str | None):
        self.model_name, self.pretrained = model, pretrained
        self._model = None

    @classmethod
    def of_dataset(cls, dataset: Dataset) -> "EmbedScorer":
        params = dataset.table(S.EMBEDDINGS).manifest().get("config", {}).get("params", {})
        return cls(params.get("model", "foil-tiny-vit"), params.get("pretrained"))

    def _load(self) -> None:
        from pipeline.models import factory as M

        self._model, self._tokenize, self.image_size = M.load_encoder(self.model_name, self.pretrained)

    def texts(self, texts: list[str]) -> np.ndarray:
        from pipeline.models import factory as M

        if self._model is None:
            self._load()
        return M.encode_texts(self._model, self._tokenize, texts) if texts else np.zeros((0, 0), np.float32)

    def images(self, images: list[np.ndarray]) -> np.ndarray:
        """[H, W, 3] uint8 images of any size -> L2-normalised features."""
        from PIL import Image

        from pipeline.models import factory as M

        if self._model is None:
            self._load()
        size = self.image_size
        fitted = [a if a.shape[:2] == (size, size) else np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BICUBIC)) for a in images]
        return M.encode_images(self._model, fitted)


# -- configuration ----------------------------------------------------------------------------
def check_kinds(kinds: Any, where: str) -> tuple[str, ...]:
    if isinstance(kinds, str) or not isinstance(kinds, (list, tuple)) or not kinds:
        raise ConfigError(f"{where}: must be a non-empty list of kinds, got {kinds!r}")
    unknown = [k for k in kinds if k not in IMAGE_KINDS]
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]!r} is not a kind an image can show; known: {', '.join(IMAGE_KINDS)}")
    return tuple(kinds)


def check_margin(margin: Any, where: str) -> float | None:
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not -2 <= margin <= 2):
        raise ConfigError(f"{where}: must be a cosine difference in [-2, 2] or null (no margin check), got {margin!r}")
    return None if margin is None else float(margin)


@dataclass(frozen=True)
class ImageNegativesConfig:
    """The recipe's `neg_image` section, validated. `generate` holds each diffusion method's
    own parameters (the `p2p:` / `inpaint:` subsections), for its stage."""

    methods: tuple[str, ...] = (MINED,)
    kinds: tuple[str, ...] = DEFAULT_KINDS
    margin: float | None = 0.0
    min_similarity: float = 0.3
    k: int = 16
    generate: dict[str, dict[str, Any]] = field(default_factory=dict)

    FIELDS = ("methods", "kinds", "margin", "min_similarity", "k", *GENERATED_METHODS)

    @classmethod
    def from_dict(cls, section: dict[str, Any] | None) -> "ImageNegativesConfig":
        section = dict(section or {})
        for key in section:
            if key not in cls.FIELDS:
                raise ConfigError(f"neg_image.{key}: unknown field; known: {', '.join(cls.FIELDS)}")
        methods = section.get("methods", [MINED])
        if isinstance(methods, str) or not isinstance(methods, (list, tuple)) or not methods:
            raise ConfigError(f"neg_image.methods: must be a non-empty list of {', '.join(METHODS)}, got {methods!r}")
        for m in methods:
            if m not in METHODS:
                raise ConfigError(f"neg_image.methods: {m!r} is not one of {', '.join(METHODS)}")
        kinds = check_kinds(section.get("kinds", list(DEFAULT_KINDS)), "neg_image.kinds")
        margin = check_margin(section.get("margin", 0.0), "neg_image.margin")
        floor = section.get("min_similarity", 0.3)
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not -1 <= floor <= 1:
            raise ConfigError(f"neg_image.min_similarity: must be a cosine in [-1, 1], got {floor!r}")
        k = section.get("k", 16)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"neg_image.k: must be a positive integer, got {k!r}")
        generate = {}
        for m in GENERATED_METHODS:
            sub = section.get(m) or {}
            if not isinstance(sub, dict):
                raise ConfigError(f"neg_image.{m}: must be a mapping of {m} settings, got {sub!r}")
            if m in methods:
                generate[m] = dict(sub)
        return cls(tuple(methods), kinds, margin, float(floor), k, generate)


# -- mined ------------------------------------------------------------------------------------
def nearest_allowed(sims: np.ndarray, nbrs: np.ndarray, excluded: Callable[[int], str | None], floor: float) -> tuple[int | None, float, Counter]:
    """The first neighbour (in decreasing cosine) not excluded, if its cosine is at least
    `floor`; also the neighbours passed over, by reason."""
    passed_over: Counter = Counter()
    for sim, j in zip(sims, nbrs):
        if j < 0:
            continue
        reason = excluded(int(j))
        if reason is not None:
            passed_over[reason] += 1
            continue
        if sim < floor:
            return None, float(sim), passed_over
        return int(j), float(sim), passed_over
    return None, float("nan"), passed_over


class ImageNegativesStep(DatasetStep):
    """Commit table `neg_image`: mined image negatives for the text negatives of `kinds`, plus
    the rows the diffusion methods in `methods` committed to their own tables."""

    name = "neg_image"
    outputs = {S.NEG_IMAGE: S.NEG_IMAGE_SCHEMA}
    inputs = (S.RAW, S.SCORES, S.EMBEDDINGS, "duplicates", S.NEG_TEXT, "neg_knn", *GENERATED_TABLES.values())

    def __init__(
        self,
        methods: tuple[str, ...] = (MINED,),
        kinds: tuple[str, ...] = DEFAULT_KINDS,
        margin: float | None = 0.0,
        min_similarity: float = 0.3,
        k: int = 16,
    ):
        super().__init__()
        self.methods, self.kinds, self.k = tuple(methods), tuple(kinds), k
        self.margin, self.min_similarity = margin, min_similarity

    def config(self) -> dict[str, Any]:
        return {"methods": list(self.methods), "kinds": list(self.kinds), "margin": self.margin, "min_similarity": self.min_similarity, "k": self.k}

    def input_state(self, dataset: Dataset) -> dict[str, Any]:
        return {**super().input_state(dataset), "curate": Catalog(dataset).thresholds()}

    def compute(self, dataset: Dataset):
        start = time.perf_counter()
        if MINED in self.methods:
            yield S.NEG_IMAGE, "part-00000", self._mine(dataset)
        for i, method in enumerate(GENERATED_METHODS, start=1):
            table = dataset.table(GENERATED_TABLES[method])
            if method in self.methods and table.exists() and table.finished_shards():
                rows = table.read()
                self.count(f"gathered:{method}", rows.num_rows)
                self.stats.rows_out += rows.num_rows
                yield S.NEG_IMAGE, f"part-{i:05d}", rows
        self.stats.seconds = round(time.perf_counter() - start, 3)

    def _mine(self, dataset: Dataset) -> pa.Table:
        import faiss
        from tqdm.auto import tqdm

        catalog = Catalog(dataset)
        kinds = ", ".join("'" + k + "'" for k in self.kinds)
        negs = catalog.query(
            "SELECT n.sample_id, n.kind, n.caption, n.negative_caption FROM negatives n "
            f"JOIN curated c USING (sample_id) WHERE n.kind IN ({kinds}) ORDER BY n.sample_id, n.kind"
        )
        pool = catalog.query(
            "SELECT c.sample_id, c.caption, s.sha256, coalesce(d.duplicate_of, c.sample_id) AS dup_group, "
            "e.image_embedding, e.text_embedding FROM curated c JOIN scores s USING (sample_id) "
            "JOIN embeddings e USING (sample_id) LEFT JOIN duplicates d USING (sample_id) ORDER BY c.sample_id"
        )
        self.stats.rows_in = negs.num_rows
        out: dict[str, list[Any]] = {name: [] for name in S.NEG_IMAGE_SCHEMA.names if name != S.IMAGE}
        if negs.num_rows == 0 or pool.num_rows == 0:
            if negs.num_rows:
                self.drop("mined:no_embeddings", negs.num_rows)
            return pa.table({**out, S.IMAGE: []}, schema=S.NEG_IMAGE_SCHEMA)
        ids, sha, group = pool[S.SAMPLE_ID].to_pylist(), pool[S.SHA256].to_pylist(), pool["dup_group"].to_pylist()
        position = {sid: i for i, sid in enumerate(ids)}
        by_caption: dict[str, list[int]] = {}
        for i, caption in enumerate(pool[S.CAPTION].to_pylist()):
            by_caption.setdefault(normalise_caption(caption), []).append(i)
        images = embedding_matrix(pool[S.IMAGE_EMBEDDING])
        positive_text = embedding_matrix(pool[S.TEXT_EMBEDDING])

        scorer = EmbedScorer.of_dataset(dataset)
        neg_captions = negs[S.NEG_CAPTION].to_pylist()
        unique = sorted(set(neg_captions))
        encoded = scorer.texts(unique)
        text_of = {c: encoded[i] for i, c in enumerate(unique)}
        query = np.stack([text_of[c] for c in neg_captions]).astype(np.float32)
        index = faiss.IndexFlatIP(images.shape[1])  # exact cosine on normalised vectors
        index.add(images)
        sims, nbrs = index.search(query, min(self.k + 2, len(ids)))  # +2: the positive and a copy may come first
        limits = CheckLimits(margin=self.margin)

        rows = negs.to_pylist()
        for r, row in enumerate(tqdm(rows, desc="neg_image mined", unit="negative", disable=len(rows) < 2000)):
            kind, pos = row[S.KIND], position.get(row[S.SAMPLE_ID])
            if pos is None:  # a curated row without embeddings
                self.drop("mined:no_embeddings")
                continue

            def excluded(j: int) -> str | None:
                if j == pos:
                    return "positive"
                if group[j] == group[pos]:  # a group's id is the row it keeps, so this covers both directions
                    return "duplicate"
                if sha[j] is not None and sha[j] == sha[pos]:
                    return "same_image"
                return None

            exact = [j for j in by_caption.get(normalise_caption(row[S.NEG_CAPTION]), []) if excluded(j) is None]
            if exact:
                chosen, how = exact[0], ["exact_caption"]
            else:
                chosen, sim, passed_over = nearest_allowed(sims[r], nbrs[r], excluded, self.min_similarity)
                for reason, n in passed_over.items():
                    self.count(f"mined:skipped_{reason}", n)
                if chosen is None:
                    self.drop("mined:below_floor")
                    self.count(f"unmatched:mined:{kind}")
                    continue
                how = [f"nearest:{sim:.3f}>={self.min_similarity}"]
            ev = Evidence(
                score_negative=float(images[chosen] @ query[r]),
                score_positive=float(images[chosen] @ positive_text[pos]),
            )
            failed, passed = run_checks(MINED, ev, limits)
            if failed:
                self.drop(f"mined:{failed}")
                continue
            self.count(f"made:mined:{kind}:{how[0].split(':')[0]}")
            values = {
                S.SAMPLE_ID: row[S.SAMPLE_ID], S.KIND: kind, S.CAPTION: row[S.CAPTION], S.NEG_CAPTION: row[S.NEG_CAPTION],
                S.METHOD: MINED, S.SOURCE_ID: ids[chosen], S.MASK: None, S.BOX: None, S.SEED: None, S.PIPELINE: None,
                S.SCORE_NEGATIVE: ev.score_negative, S.SCORE_POSITIVE: ev.score_positive, S.TRAINABLE: True,
                S.CHECKS: [*how, "not_positive", "not_duplicate", *passed],
            }
            for key, value in values.items():
                out[key].append(value)
        self.stats.rows_out += len(out[S.SAMPLE_ID])
        blobs = _images_of(catalog, out[S.SOURCE_ID])
        return pa.table({**out, S.IMAGE: [blobs[s] for s in out[S.SOURCE_ID]]}, schema=S.NEG_IMAGE_SCHEMA)


def _images_of(catalog: Catalog, sample_ids: list[str]) -> dict[str, bytes]:
    if not sample_ids:
        return {}
    con = catalog.connect()
    try:
        table = con.sql(
            "SELECT sample_id, image FROM raw WHERE sample_id IN (SELECT unnest(?::VARCHAR[]))", params=[sorted(set(sample_ids))]
        ).to_arrow_table()
    finally:
        con.close()
    return dict(zip(table[S.SAMPLE_ID].to_pylist(), table[S.IMAGE].to_pylist()))


def check_inputs(dataset: Dataset) -> None:
    """Every method scores with the embed model and starts from text negatives: say what is
    missing before any work starts."""
    if not dataset.table(S.EMBEDDINGS).exists():
        raise ConfigError(f"neg_image needs embeddings: run `foil embed --dataset {dataset.url}` first")
    if not (dataset.table(S.NEG_TEXT).exists() or dataset.table("neg_knn").exists()):
        raise ConfigError(f"neg_image needs text negatives: run `foil negatives --dataset {dataset.url}` first")


def commit(dataset: Dataset, config: ImageNegativesConfig, overwrite: bool = False) -> dict[str, Any]:
    """Commit table `neg_image` (mined rows and the generated tables' rows); returns its stats."""
    check_inputs(dataset)
    Catalog(dataset).refresh()
    step = ImageNegativesStep(config.methods, config.kinds, config.margin, config.min_similarity, config.k)
    report = run_dataset_step(step, dataset, overwrite=overwrite)
    Catalog(dataset).refresh()
    return {**report.stats, "kept_unchanged": report.shards_skipped > 0}
