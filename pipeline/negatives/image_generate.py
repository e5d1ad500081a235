"""Diffusion-made image negatives (`p2p`, `inpaint`), one shard of text negatives at a time.

The diffusion pipeline is the costly part, so this is a per-shard stage with `reuse_instance`:
the local runner builds it once for every shard, the Ray runner once per actor of a pool. It
reads the view `neg_image_candidates` (text negatives of curated rows, with the positive's image
from its own raw shard) and writes one row per kept image into its method's table
(`neg_image_p2p`, `neg_image_inpaint`), which `neg_image` then gathers.

- p2p: the positive and the negative caption are generated together from one initial latent
  with Prompt-to-Prompt attention control (pipeline/diffusion), so the two images differ only
  where the words differ. The changed area is where they differ; its box is recorded.
- inpaint: the region of the edited words in the positive's real image (a grounding map, or a
  box) is repainted with the negative caption and composited, so pixels outside the dilated
  mask stay the source's. The mask is recorded.

Each image goes through the checks of pipeline/negatives/image.py (margin, area, outside_mask);
a failure is counted as `<method>:<check>`. Rows made by a random-weight pipeline (the tiny
ones) are written with `trainable = false`: they exercise the path and are never trained on.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline.core import schema as S
from pipeline.core.stage import ALL_CORES, ConfigError, Stage, register
from pipeline.negatives.image import (
    DEFAULT_KINDS, GENERATED_METHODS, INPAINT, P2P, CheckLimits, EmbedScorer, Evidence,
    changed_area, check_kinds, check_margin, run_checks,
)

TINY_PREFIX = "tiny:"
# The diffusion pipeline kind each method needs (load_pipeline's `kind`; p2p takes SD or SDXL).
PIPELINE_KIND = {P2P: "auto", INPAINT: "inpaint"}


def row_seed(seed: int, sample_id: str, kind: str) -> int:
    """The same row always gets the same seed, on any worker and rerun."""
    digest = hashlib.blake2b(f"{seed}\x00{sample_id}\x00{kind}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _positive_number(value: Any, where: str, integer: bool = False, allow_zero: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or value < 0 or (value == 0 and not allow_zero):
        kind = "integer" if integer else "number"
        raise ConfigError(f"{where}: must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}")


@register
class GeneratedImageNegativesStage(Stage):
    name = "neg_image"
    output_schema = S.NEG_IMAGE_SCHEMA
    input_columns = [S.SAMPLE_ID, S.KIND, S.CAPTION, S.NEG_CAPTION, S.EDIT_SPAN, S.EDIT_FROM, S.EDIT_TO]
    shard_columns = (S.IMAGE,)  # the positive's image, from its own raw shard (inpaint's source)
    batch_rows = 8
    reuse_instance = True
    process_cores = ALL_CORES  # diffusion: torch's intra-op threads on the CPU, or the one GPU

    def __init__(
        self,
        method: str = P2P,
        pipeline: str = "tiny:txt2img",
        kinds: list[str] | tuple[str, ...] = DEFAULT_KINDS,
        margin: float | None = 0.0,
        min_area: float = 0.0,
        max_area: float = 1.0,
        steps: int = 50,
        guidance: float = 7.5,
        seed: int = 0,
        grounding: str = "cross_attention",
        dilate_px: int = 4,
        max_per_shard: int | None = None,
        batch_size: int = 4,
        device: str | None = None,
        embed_model: str = "foil-tiny-vit",
        embed_pretrained: str | None = None,
    ):
        super().__init__()
        if method not in GENERATED_METHODS:
            raise ConfigError(f"neg_image.method: {method!r} is not one of {', '.join(GENERATED_METHODS)}")
        where = f"neg_image.{method}"
        if not isinstance(pipeline, str) or not pipeline:
            raise ConfigError(f"{where}.pipeline: must be a local folder or file, or tiny:<kind>, got {pipeline!r}")
        if not pipeline.startswith(TINY_PREFIX) and not Path(pipeline).exists():
            raise ConfigError(f"{where}.pipeline: {pipeline} does not exist (pipelines are never downloaded)")
        self.kinds = check_kinds(list(kinds), "neg_image.kinds")
        self.margin = check_margin(margin, "neg_image.margin")
        for key, value in (("min_area", min_area), ("max_area", max_area)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"{where}.{key}: must be a fraction of the image in [0, 1], got {value!r}")
        if min_area > max_area:
            raise ConfigError(f"{where}.min_area: {min_area} is above max_area {max_area}")
        _positive_number(steps, f"{where}.steps", integer=True)
        _positive_number(guidance, f"{where}.guidance", allow_zero=True)
        _positive_number(seed, f"{where}.seed", integer=True, allow_zero=True)
        _positive_number(dilate_px, f"{where}.dilate_px", integer=True, allow_zero=True)
        _positive_number(batch_size, f"{where}.batch_size", integer=True)
        if max_per_shard is not None:
            _positive_number(max_per_shard, f"{where}.max_per_shard", integer=True)
        from pipeline.diffusion import GROUNDINGS  # the registry only: torch and diffusers load later

        if grounding not in GROUNDINGS:
            raise ConfigError(f"{where}.grounding: {grounding!r} is not one of {', '.join(sorted(GROUNDINGS))}")
        self.method, self.pipeline_spec = method, pipeline
        self.limits = CheckLimits(margin=self.margin, min_area=float(min_area), max_area=float(max_area))
        self.steps, self.guidance, self.seed = steps, float(guidance), seed
        self.grounding, self.dilate_px = grounding, dilate_px
        self.max_per_shard, self.batch_size, self.device = max_per_shard, batch_size, device
        self.scorer = EmbedScorer(embed_model, embed_pretrained)
        self._loaded = None

    def config(self) -> dict[str, Any]:
        return {
            "method": self.method, "pipeline": self.pipeline_spec, "kinds": list(self.kinds), "margin": self.margin,
            "min_area": self.limits.min_area, "max_area": self.limits.max_area, "steps": self.steps,
            "guidance": self.guidance, "seed": self.seed, "grounding": self.grounding, "dilate_px": self.dilate_px,
            "max_per_shard": self.max_per_shard, "batch_size": self.batch_size, "device": self.device,
            "embed_model": self.scorer.model_name, "embed_pretrained": self.scorer.pretrained,
        }

    def _load(self) -> Any:
        if self._loaded is None:
            from pipeline.diffusion import load_pipeline

            self._loaded = load_pipeline(self.pipeline_spec, kind=PIPELINE_KIND[self.method], device=self.device, field=f"neg_image.{self.method}.pipeline")
            self.count("model_loads")
        return self._loaded

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        rows = []
        for row in batch.to_pylist():
            if row[S.KIND] not in self.kinds:
                self.count("skipped_kind")
                continue
            if self.max_per_shard is not None and self.stats.counts["attempted"] >= self.max_per_shard:
                self.count("over_max_per_shard")
                continue
            if self.method == INPAINT and row[S.IMAGE] is None:
                self.drop(f"{self.method}:no_source_image")
                continue
            self.count("attempted")
            rows.append(row)
        made: list[dict[str, Any]] = []
        for start in range(0, len(rows), self.batch_size):
            part = rows[start : start + self.batch_size]
            seeds = [row_seed(self.seed, r[S.SAMPLE_ID], r[S.KIND]) for r in part]
            made += self._p2p(part, seeds) if self.method == P2P else self._inpaint(part, seeds)
        if made:
            yield pa.RecordBatch.from_pylist(self._checked(made), schema=S.NEG_IMAGE_SCHEMA)

    def _p2p(self, rows: list[dict[str, Any]], seeds: list[int]) -> list[dict[str, Any]]:
        from pipeline.diffusion import generate_pairs

        loaded = self._load()
        pairs = generate_pairs(loaded, [r[S.CAPTION] for r in rows], [r[S.NEG_CAPTION] for r in rows], seeds, steps=self.steps, guidance=self.guidance)
        out = []
        for row, seed, (source, edited) in zip(rows, seeds, pairs):
            area, box = changed_area(np.asarray(source.convert("RGB")), np.asarray(edited.convert("RGB")))
            out.append({"row": row, "seed": seed, "image": edited.convert("RGB"), "mask": None, "box": box, "evidence": Evidence(area=area)})
        return out

    def _inpaint(self, rows: list[dict[str, Any]], seeds: list[int]) -> list[dict[str, Any]]:
        from PIL import Image

        from pipeline.diffusion import inpaint
        from pipeline.diffusion.inpaint import dilate

        loaded = self._load()
        sources, masks, kept, kept_seeds = [], [], [], []
        for row, seed in zip(rows, seeds):
            with Image.open(io.BytesIO(row[S.IMAGE])) as img:
                source = img.convert("RGB")
            mask = self._mask(loaded, source, row, seed)
            if mask is None:
                self.drop(f"{self.method}:no_region")
                continue
            sources.append(source)
            masks.append(mask)
            kept.append(row)
            kept_seeds.append(seed)
        if not kept:
            return []
        edited = inpaint(
            loaded, sources, masks, [r[S.NEG_CAPTION] for r in kept], kept_seeds,
            steps=self.steps, guidance=self.guidance, dilate_px=self.dilate_px, batch_size=self.batch_size,
        )
        out = []
        for row, seed, source, mask, image in zip(kept, kept_seeds, sources, masks, edited):
            image = image.convert("RGB")
            if image.size != source.size:
                image = image.resize(source.size)
            grown = dilate(mask, self.dilate_px)
            diff = np.abs(np.asarray(image, np.int16) - np.asarray(source, np.int16)).max(axis=-1)
            ys, xs = np.nonzero(grown)
            box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
            ev = Evidence(area=float(grown.mean()), outside_change=float(diff[~grown].max()) if (~grown).any() else 0.0)
            out.append({"row": row, "seed": seed, "image": image, "mask": png(Image.fromarray(grown.astype(np.uint8) * 255)), "box": box, "evidence": ev})
        return out

    def _mask(self, loaded: Any, source: Any, row: dict[str, Any], seed: int) -> np.ndarray | None:
        """The region of the edited words, by the grounding method named in the recipe (the
        diffusion model's cross-attention on the edited tokens, or a box the data gives); None
        when the row has nothing to ground (no edit span, no box, an empty map)."""
        from pipeline.diffusion import GroundingQuery, ground

        span = row.get(S.EDIT_SPAN)
        query = GroundingQuery(image=source, box=None, prompt=row[S.CAPTION], token_span=tuple(span[:2]) if span else None, seed=seed)
        try:
            mask = ground(self.grounding, query, loaded, field=f"neg_image.{self.method}.grounding")
        except ConfigError:  # this row lacks what the method needs (a box, a span of tokens)
            return None
        return mask if mask.any() else None

    def _checked(self, made: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Score every image with the embed model, run the method's checks, and build the rows
        that passed; each failure is counted by check."""
        loaded = self._load()
        captions = [m["row"][S.CAPTION] for m in made]
        negatives = [m["row"][S.NEG_CAPTION] for m in made]
        images = self.scorer.images([np.asarray(m["image"]) for m in made])
        texts = self.scorer.texts(negatives + captions)
        out = []
        for i, m in enumerate(made):
            ev: Evidence = m["evidence"]
            ev.score_negative = float(images[i] @ texts[i])
            ev.score_positive = float(images[i] @ texts[len(made) + i])
            failed, passed = run_checks(self.method, ev, self.limits)
            if failed:
                self.drop(f"{self.method}:{failed}")
                continue
            row = m["row"]
            self.count(f"made:{self.method}:{row[S.KIND]}")
            out.append({
                S.SAMPLE_ID: row[S.SAMPLE_ID], S.KIND: row[S.KIND], S.CAPTION: row[S.CAPTION], S.NEG_CAPTION: row[S.NEG_CAPTION],
                S.METHOD: self.method, S.SOURCE_ID: row[S.SAMPLE_ID] if self.method == INPAINT else None,
                S.MASK: m["mask"], S.BOX: m["box"], S.SEED: m["seed"], S.PIPELINE: loaded.id,
                S.SCORE_NEGATIVE: ev.score_negative, S.SCORE_POSITIVE: ev.score_positive,
                S.TRAINABLE: not loaded.random_weights, S.CHECKS: passed, S.IMAGE: png(m["image"]),
            })
        return out
