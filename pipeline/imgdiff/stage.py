"""The Img-Diff stages: image pairs from caption pairs, then their difference areas and captions.

`ImgDiffGenerateStage` (registry key `imgdiff_generate`) is per shard of `neg_text`: each
replace_object row (caption, negative caption, the replaced word and its replacement) becomes
two images made by Prompt-to-Prompt from one shared initial latent (pipeline/diffusion), into
table `imgdiff_generated`. It loads its diffusion pipeline once per instance, and declares
`reuse_instance`, so the Ray runner keeps one per actor. Rows from a random-weight (`tiny:*`)
pipeline are flagged `trainable = false`.

`ImgDiffStep` (`imgdiff`) then takes every generated and imported pair (table `imgdiff_import`)
through the pair filter, the Difference Area Generator and the difference captioner into table
`imgdiff`. Scores first, decision after: similarity and boxes are written for every pair, and a
dropped pair stays in the table with its `filter_reason`, counted by reason.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import time
from collections import Counter
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
from PIL import Image
from tqdm.auto import tqdm

from pipeline.core import schema as S
from pipeline.core.stage import ConfigError, DatasetStep, Stage, register
from pipeline.core.store import shard_name
from pipeline.imgdiff import filters as F
from pipeline.imgdiff.areas import DifferenceAreaGenerator
from pipeline.imgdiff.captions import captioner as make_captioner
from pipeline.imgdiff.captions import differing_words
from pipeline.models.images import on_white

REPLACE_OBJECT = "replace_object"
METHOD_P2P = "p2p"
METHOD_IMPORT = "import"
# What `checks` lists for a pair, in order, for each test it passed.
CHECK_SIMILARITY = "similarity_band"
CHECK_AREA = "difference_area"


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def pair_id(*parts: str | bytes) -> str:
    """A stable hex key for a pair (its first 8 digits also pick its split, as export does)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def _positive_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{field}: must be a positive integer, got {value!r}")
    return value


def empty_analysis(n: int) -> dict[str, list]:
    """The analysis columns of `n` pairs not analysed yet."""
    return {S.SIMILARITY: [None] * n, S.BOXES: [None] * n, S.BOX_SCORES: [None] * n, S.DIFFERENCE_CAPTION: [None] * n,
            S.FILTER_REASON: [None] * n, S.CHECKS: [None] * n}


@register
class ImgDiffGenerateStage(Stage):
    name = "imgdiff_generate"
    output_schema = S.IMGDIFF_SCHEMA
    input_columns = [S.SAMPLE_ID, S.KIND, S.CAPTION, S.NEG_CAPTION, S.EDIT_FROM, S.EDIT_TO]
    batch_rows = None  # the whole shard: `max_pairs_per_shard` counts across it
    reuse_instance = True

    def __init__(
        self,
        pipeline: str = "tiny:txt2img",
        steps: int = 50,
        guidance: float = 7.5,
        size: int | None = None,
        seed: int = 0,
        batch_pairs: int = 4,
        max_pairs_per_shard: int | None = None,
        self_replace_fraction: float = 0.4,
        cross_replace_fraction: float = 1.0,
    ):
        super().__init__()
        if not isinstance(pipeline, str) or not pipeline:
            raise ConfigError(f"imgdiff.generate.pipeline: a diffusers folder, a single file or tiny:txt2img, got {pipeline!r}")
        self.pipeline = pipeline
        self.steps = _positive_int("imgdiff.generate.steps", steps)
        self.size = None if size is None else _positive_int("imgdiff.generate.size", size)
        self.batch_pairs = _positive_int("imgdiff.generate.batch_pairs", batch_pairs)
        self.max_pairs_per_shard = None if max_pairs_per_shard is None else _positive_int("imgdiff.generate.max_pairs_per_shard", max_pairs_per_shard)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"imgdiff.generate.seed: must be an integer, got {seed!r}")
        self.seed = seed
        for name, value in (("guidance", guidance), ("self_replace_fraction", self_replace_fraction), ("cross_replace_fraction", cross_replace_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (name.endswith("fraction") and value > 1):
                raise ConfigError(f"imgdiff.generate.{name}: must be a number{' in [0, 1]' if name.endswith('fraction') else ' >= 0'}, got {value!r}")
        self.guidance = float(guidance)
        self.self_replace_fraction = float(self_replace_fraction)
        self.cross_replace_fraction = float(cross_replace_fraction)
        self._loaded = None  # the diffusion pipeline, loaded on first use, once per instance

    def config(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline, "steps": self.steps, "guidance": self.guidance, "size": self.size, "seed": self.seed,
            "batch_pairs": self.batch_pairs, "max_pairs_per_shard": self.max_pairs_per_shard,
            "self_replace_fraction": self.self_replace_fraction, "cross_replace_fraction": self.cross_replace_fraction,
        }

    def _seed(self, sample_id: str, negative: str) -> int:
        # One seed per caption pair, stable across reruns: both images start from its latent.
        return int(pair_id(str(self.seed), sample_id, negative)[:8], 16)

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        from pipeline.diffusion import generate_pairs, load_pipeline  # torch and diffusers load only on the worker

        rows = [r for r in batch.to_pylist()]
        chosen = []
        for r in rows:
            if r[S.KIND] != REPLACE_OBJECT:
                self.count("skipped:not_replace_object")  # other kinds change no object: not a failure
                continue
            if not r[S.EDIT_FROM] or not r[S.EDIT_TO] or not r[S.NEG_CAPTION]:
                self.drop("no_edit")
                continue
            if self.max_pairs_per_shard is not None and len(chosen) >= self.max_pairs_per_shard:
                self.drop("over_max_pairs_per_shard")
                continue
            chosen.append(r)
        if not chosen:
            return
        if self._loaded is None:
            self._loaded = load_pipeline(self.pipeline, field="imgdiff.generate.pipeline")
            self.count("pipeline_loads")
        loaded = self._loaded
        seeds = [self._seed(r[S.SAMPLE_ID], r[S.NEG_CAPTION]) for r in chosen]
        images = generate_pairs(
            loaded, [r[S.CAPTION] for r in chosen], [r[S.NEG_CAPTION] for r in chosen], seeds, steps=self.steps,
            guidance=self.guidance, self_replace_fraction=self.self_replace_fraction,
            cross_replace_fraction=self.cross_replace_fraction, size=self.size, batch_pairs=self.batch_pairs,
        )
        trainable = not loaded.random_weights
        self.count("pairs_generated", len(chosen))
        if not trainable:
            self.count("untrainable:random_weights", len(chosen))
        n = len(chosen)
        yield pa.RecordBatch.from_pydict({
            S.PAIR_ID: [pair_id(r[S.SAMPLE_ID], r[S.NEG_CAPTION], str(s), loaded.id) for r, s in zip(chosen, seeds)],
            S.SAMPLE_ID: [r[S.SAMPLE_ID] for r in chosen],
            S.CAPTION_A: [r[S.CAPTION] for r in chosen],
            S.CAPTION_B: [r[S.NEG_CAPTION] for r in chosen],
            S.OBJECT_A: [r[S.EDIT_FROM] for r in chosen],
            S.OBJECT_B: [r[S.EDIT_TO] for r in chosen],
            S.METHOD: [METHOD_P2P] * n,
            S.SEED: seeds,
            S.PIPELINE: [loaded.id] * n,
            **empty_analysis(n),
            S.TRAINABLE: [trainable] * n,
            S.IMAGE_A: [png(a) for a, _ in images],
            S.IMAGE_B: [png(b) for _, b in images],
        }, schema=self.output_schema)


def _decode(blob: bytes | None) -> np.ndarray | None:
    if not blob:
        return None
    try:
        with Image.open(io.BytesIO(blob)) as img:
            # RGB needs no compositing (the costliest part of decoding a large pair)
            return np.asarray(img if img.mode == "RGB" else on_white(img), dtype=np.uint8)
    except Exception:  # corrupt bytes: a per-pair failure, recorded as its filter reason
        return None


class ImgDiffStep(DatasetStep):
    """Pair filter, Difference Area Generator and difference captions over every generated and
    imported pair, into table `imgdiff`; the scorer and its model are built once per run."""

    name = "imgdiff"
    outputs = {S.IMGDIFF: S.IMGDIFF_SCHEMA}
    inputs = (S.IMGDIFF_GENERATED, S.IMGDIFF_IMPORT)

    def __init__(
        self,
        model: str | None = None,
        pretrained: str | None = None,
        lower: float = 0.9,
        upper: float = 0.98,
        captioner: str = "template",
        batch_pairs: int = 64,
        progress: bool = True,
        **areas: Any,
    ):
        """`areas`: the Difference Area Generator's own parameters and defaults (proposers,
        thresholds, NMS, box limits; see `DifferenceAreaGenerator`)."""
        super().__init__()
        for name, value in (("lower", lower), ("upper", upper)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1:
                raise ConfigError(f"imgdiff.{name}: must be a cosine in [-1, 1], got {value!r}")
        if lower >= upper:
            raise ConfigError(f"imgdiff.lower: must be below imgdiff.upper ({lower} >= {upper})")
        if model is None and pretrained is not None:
            raise ConfigError("imgdiff.pretrained: given without imgdiff.model")
        if model is not None:
            from pipeline.models import factory as M

            try:
                M.model_config(model)
            except KeyError as exc:
                raise ConfigError(f"imgdiff.model: {exc.args[0]}") from None
        self.scorer = F.make_scorer(model, pretrained)
        self.areas = DifferenceAreaGenerator(**areas)
        if self.areas.text_threshold is not None and model is None:
            raise ConfigError("imgdiff.text_threshold: matching crops to words needs an embed model (imgdiff.model)")
        self.captioner_name = captioner
        self.captioner = make_captioner(captioner)
        self.lower, self.upper = float(lower), float(upper)
        self.batch_pairs = _positive_int("imgdiff.batch_pairs", batch_pairs)
        self.progress = progress

    @classmethod
    def from_params(cls, params: dict[str, Any], progress: bool = True) -> "ImgDiffStep":
        """From the recipe's `imgdiff` section, refusing unknown fields by name."""
        own = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "progress", "areas")]
        accepted = own + [p for p in inspect.signature(DifferenceAreaGenerator.__init__).parameters if p != "self"]
        for key in params:
            if key not in accepted:
                raise ConfigError(f"imgdiff.{key}: unknown field; known: generate, {', '.join(accepted)}")
        return cls(**params, progress=progress)

    def config(self) -> dict[str, Any]:
        return {**self.scorer.config(), "lower": self.lower, "upper": self.upper, **self.areas.config(), "captioner": self.captioner_name}

    def compute(self, dataset: Any) -> Iterator[tuple[str, str, pa.Table]]:
        sources = [(name, dataset.table(name)) for name in self.inputs if dataset.table(name).exists()]
        shards = [(name, table, shard) for name, table in sources for shard in sorted(table.finished_shards())]
        total = sum(info.rows for _, table in sources for info in table.finished_shards().values())
        index = 0
        with tqdm(total=total, desc="imgdiff", unit="pair", disable=not self.progress) as bar:
            for source, table, shard in shards:
                start = time.perf_counter()
                rows = table.read_shard(shard)
                self.stats.rows_in += rows.num_rows
                parts = [self.analyse(rows.slice(start, self.batch_pairs)) for start in range(0, rows.num_rows, self.batch_pairs)]
                bar.update(rows.num_rows)
                out = pa.concat_tables(parts) if parts else S.IMGDIFF_SCHEMA.empty_table()
                self.stats.rows_out += out.num_rows
                self.stats.seconds += time.perf_counter() - start
                yield S.IMGDIFF, shard_name(index), out
                index += 1

    def analyse(self, rows: pa.Table) -> pa.Table:
        """Scores, boxes, captions and the decision for a batch of pairs (IMGDIFF_SCHEMA rows)."""
        data = rows.to_pydict()
        n = rows.num_rows
        images = [(_decode(a), _decode(b)) for a, b in zip(data[S.IMAGE_A], data[S.IMAGE_B])]
        reasons: list[str | None] = [None] * n
        for i, (a, b) in enumerate(images):
            if a is None or b is None:
                reasons[i] = F.UNREADABLE_IMAGE
            elif a.shape != b.shape:
                reasons[i] = F.SIZE_MISMATCH
        scored = [i for i in range(n) if reasons[i] is None]
        similarity = np.full(n, np.nan, np.float32)
        similarity[scored] = F.pair_similarities(self.scorer, [images[i] for i in scored])
        boxes: list[list | None] = [None] * n
        scores: list[list | None] = [None] * n
        captions: list[str | None] = [None] * n
        checks: list[list[str]] = [[] for _ in range(n)]
        rejected: Counter = Counter()
        for i in scored:
            a, b = images[i]
            object_a, object_b = data[S.OBJECT_A][i], data[S.OBJECT_B][i]
            if not object_a or not object_b:  # imported pairs: the words that differ between the captions
                object_a, object_b = differing_words(data[S.CAPTION_A][i] or "", data[S.CAPTION_B][i] or "")
                data[S.OBJECT_A][i], data[S.OBJECT_B][i] = object_a, object_b
            found = self.areas.find(a, b, self.scorer, object_a, object_b)
            rejected.update(found.rejected)
            boxes[i] = [list(box) for box in found.boxes]
            scores[i] = found.scores
            captions[i] = self.captioner.caption(a, b, found.boxes, object_a, object_b) or None
            band = F.pair_filter_reason(float(similarity[i]), self.lower, self.upper)
            if band is None:
                checks[i].append(CHECK_SIMILARITY)
            if found.boxes:
                checks[i].append(CHECK_AREA)
            reasons[i] = band or (None if found.boxes else F.NO_DIFFERENCE_AREA)
            self.count("boxes", len(found.boxes))
        for reason, k in rejected.items():
            if k:
                self.count(f"box:{reason}", k)
        for i, reason in enumerate(reasons):
            if reason is None:
                self.count("kept")
                self.count(f"kept:{data[S.METHOD][i]}")
            else:
                self.drop(reason)
        data.update({
            S.SIMILARITY: [None if np.isnan(s) else float(s) for s in similarity],
            S.BOXES: boxes, S.BOX_SCORES: scores, S.DIFFERENCE_CAPTION: captions, S.FILTER_REASON: reasons,
            S.CHECKS: [c if reasons[i] != F.UNREADABLE_IMAGE else None for i, c in enumerate(checks)],
        })
        return pa.Table.from_pydict(data, schema=S.IMGDIFF_SCHEMA)
