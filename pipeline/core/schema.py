"""Column and table names, and the Arrow schemas of foil's tables, in one place.

Every stage, SQL file and test refers to columns through these constants, so a rename is one
edit. Image bytes always live in their own column (`IMAGE`) so that metadata queries, which
DuckDB pushes down to the parquet reader, never read them.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

SCHEMA_VERSION = 1

# Tables (each a folder of parquet shards in a dataset).
URLS = "urls"
RAW = "raw"
SCORES = "scores"
NEG_TEXT = "neg_text"
TRAIN = "train"
RUNS = "runs"
METRICS = "metrics"
EMBEDDINGS = "embeddings"
NEG_IMAGE = "neg_image"
IMGDIFF = "imgdiff"
# The pairs `imgdiff` analyses (IMGDIFF_SCHEMA, analysis columns null): generated from neg_text,
# and imported by `foil imgdiff import`.
IMGDIFF_GENERATED = "imgdiff_generated"
IMGDIFF_IMPORT = "imgdiff_import"
NEG_BLIND = "neg_blind"  # blind (text-only) scores of neg_text's pairs and the refinement's decision

# Columns shared across tables.
SAMPLE_ID = "sample_id"
URL = "url"
CAPTION = "caption"
IMAGE = "image"

# raw
STATUS = "status"
ERROR = "error"
ERROR_KIND = "error_kind"
WIDTH = "width"
HEIGHT = "height"
ORIGINAL_WIDTH = "original_width"
ORIGINAL_HEIGHT = "original_height"
SHA256 = "sha256"
EXTRA = "extra"  # the url list's kept columns (`--keep-columns`) as one JSON object, or null

# urls
EXPECTED_SHA256 = "expected_sha256"  # a list's own sha256 of the image (DataComp), checked on download

# scores
ASPECT_RATIO = "aspect_ratio"
CAPTION_CHARS = "caption_chars"
CAPTION_WORDS = "caption_words"
IMAGE_BYTES = "image_bytes"
PHASH = "phash"
COLOR_THUMB = "color_thumb"
DECODE_ERROR = "decode_error"
LANGUAGE = "language"  # ISO 639-1 code from langid.py
LANGUAGE_SCORE = "language_score"  # its probability
CAPTION_FLAG = "caption_flag"  # why the caption is not a description (filename, url, ...), or null

# neg_text
KIND = "kind"
NEG_CAPTION = "negative_caption"
EDIT_SPAN = "edit_span"
EDIT_FROM = "edit_from"
EDIT_TO = "edit_to"
GENERATOR = "generator"
CHECKS = "checks"
SOURCE_ID = "source_id"  # kNN-mined negatives: the row the negative comes from

# neg_blind: how well a text-only scorer tells the caption from the negative (pipeline/negatives/blind.py)
BLIND_SCORE = "blind_score"  # held-out margin decision(caption) - decision(negative), fitted on all candidates; > 0: blind-solvable
BLIND_SCORE_REFINED = "blind_score_refined"  # the same under a scorer refitted on the kept pairs (null when rejected)

# neg_image: an image that shows a text negative's caption
METHOD = "method"  # mined | inpaint | p2p
MASK = "mask"  # PNG of the edited region (inpaint), or null
BOX = "box"  # [x0, y0, x1, y1] in pixels of the changed region, or null
SEED = "seed"
PIPELINE = "pipeline"  # the diffusion pipeline's id (its folder or file, or tiny:<kind>), or null for mined
SCORE_NEGATIVE = "score_negative"  # cosine(negative image, negative caption), embed model
SCORE_POSITIVE = "score_positive"  # cosine(negative image, positive caption)
TRAINABLE = "trainable"  # false for rows made by a random-weight pipeline: never exported

# imgdiff: two near-identical images that differ in one object
PAIR_ID = "pair_id"
IMAGE_A = "image_a"
IMAGE_B = "image_b"
CAPTION_A = "caption_a"
CAPTION_B = "caption_b"
OBJECT_A = "object_a"
OBJECT_B = "object_b"
SIMILARITY = "similarity"  # whole-image cosine of the pair
BOXES = "boxes"  # list of [x0, y0, x1, y1], most different first
BOX_SCORES = "box_scores"  # per box: 1 - cosine of its two crops
DIFFERENCE_CAPTION = "difference_caption"
FILTER_REASON = "filter_reason"  # why the pair was dropped, or null when kept

# train
NEG_KIND = "negative_kind"
NEG_IMAGE_COL = "negative_image"  # an image showing `negative_caption`, or null
SPLIT = "split"
# export_rows (the view export reads): where a row's negative image or Img-Diff image lives
NEG_IMAGE_METHOD = "negative_image_method"  # neg_image's method, `imgdiff` for a pair's rows, or null
NEG_IMAGE_SHARD = "negative_image_shard"  # the neg_image shard holding the row's negative image
PAIR_SIDE = "pair_side"  # a or b: which image of the Img-Diff pair is the row's own
PAIR_SHARD = "pair_shard"  # the imgdiff shard holding the pair

# embeddings
IMAGE_EMBEDDING = "image_embedding"
TEXT_EMBEDDING = "text_embedding"
CLIP_SCORE = "clip_score"
MODEL = "model"

# runs / metrics
RUN_ID = "run_id"
STEP = "step"
NAME = "name"
VALUE = "value"

STATUS_SUCCESS = "success"

URLS_SCHEMA = pa.schema(
    [(SAMPLE_ID, pa.string()), (URL, pa.string()), (CAPTION, pa.string()), (EXPECTED_SHA256, pa.string()), (EXTRA, pa.string())]
)

RAW_SCHEMA = pa.schema(
    [
        (SAMPLE_ID, pa.string()),
        (URL, pa.string()),
        (CAPTION, pa.string()),
        (STATUS, pa.string()),
        (ERROR, pa.string()),
        (ERROR_KIND, pa.string()),
        (WIDTH, pa.int32()),
        (HEIGHT, pa.int32()),
        (ORIGINAL_WIDTH, pa.int32()),
        (ORIGINAL_HEIGHT, pa.int32()),
        (SHA256, pa.string()),
        (IMAGE, pa.binary()),
    ]
)

# What the crawl writes: `raw` plus the kept columns. Kept apart from RAW_SCHEMA so that raw tables
# written by other steps (imports, tests) need not carry `extra`; views read shards by column
# name (union_by_name), so a shard without it reads as null there.
CRAWLED_RAW_SCHEMA = pa.schema([*(f for f in RAW_SCHEMA if f.name != IMAGE), (EXTRA, pa.string()), RAW_SCHEMA.field(IMAGE)])

SCORES_SCHEMA = pa.schema(
    [
        (SAMPLE_ID, pa.string()),
        (WIDTH, pa.int32()),
        (HEIGHT, pa.int32()),
        (ASPECT_RATIO, pa.float32()),
        (CAPTION_CHARS, pa.int32()),
        (CAPTION_WORDS, pa.int32()),
        (IMAGE_BYTES, pa.int64()),
        (SHA256, pa.string()),
        (PHASH, pa.string()),
        (COLOR_THUMB, pa.string()),
        (DECODE_ERROR, pa.string()),
        (LANGUAGE, pa.string()),
        (LANGUAGE_SCORE, pa.float32()),
        (CAPTION_FLAG, pa.string()),
    ]
)

NEG_TEXT_SCHEMA = pa.schema(
    [
        (SAMPLE_ID, pa.string()),
        (KIND, pa.string()),
        (CAPTION, pa.string()),
        (NEG_CAPTION, pa.string()),
        (EDIT_SPAN, pa.list_(pa.int32())),
        (EDIT_FROM, pa.string()),
        (EDIT_TO, pa.string()),
        (GENERATOR, pa.string()),
        (CHECKS, pa.list_(pa.string())),
        (SOURCE_ID, pa.string()),
    ]
)

TRAIN_SCHEMA = pa.schema(
    [
        (SAMPLE_ID, pa.string()),
        (CAPTION, pa.string()),
        (NEG_CAPTION, pa.string()),
        (NEG_KIND, pa.string()),
        (SPLIT, pa.string()),
        (IMAGE, pa.binary()),
        (NEG_IMAGE_COL, pa.binary()),
    ]
)

NEG_IMAGE_SCHEMA = pa.schema(
    [
        (SAMPLE_ID, pa.string()),
        (KIND, pa.string()),
        (CAPTION, pa.string()),
        (NEG_CAPTION, pa.string()),
        (METHOD, pa.string()),
        (SOURCE_ID, pa.string()),  # mined: the row whose image it is
        (MASK, pa.binary()),
        (BOX, pa.list_(pa.int32())),
        (SEED, pa.int64()),
        (PIPELINE, pa.string()),
        (SCORE_NEGATIVE, pa.float32()),
        (SCORE_POSITIVE, pa.float32()),
        (TRAINABLE, pa.bool_()),
        (CHECKS, pa.list_(pa.string())),
        (IMAGE, pa.binary()),
    ]
)

IMGDIFF_SCHEMA = pa.schema(
    [
        (PAIR_ID, pa.string()),
        (SAMPLE_ID, pa.string()),  # the positive row the caption pair came from, or null (imported)
        (CAPTION_A, pa.string()),
        (CAPTION_B, pa.string()),
        (OBJECT_A, pa.string()),
        (OBJECT_B, pa.string()),
        (METHOD, pa.string()),  # p2p | import
        (SEED, pa.int64()),
        (PIPELINE, pa.string()),
        (SIMILARITY, pa.float32()),
        (BOXES, pa.list_(pa.list_(pa.int32()))),
        (BOX_SCORES, pa.list_(pa.float32())),
        (DIFFERENCE_CAPTION, pa.string()),
        (FILTER_REASON, pa.string()),
        (TRAINABLE, pa.bool_()),
        (CHECKS, pa.list_(pa.string())),
        (IMAGE_A, pa.binary()),
        (IMAGE_B, pa.binary()),
    ]
)

NEG_BLIND_SCHEMA = pa.schema(
    [
        (SAMPLE_ID, pa.string()),
        (KIND, pa.string()),
        (NEG_CAPTION, pa.string()),
        (BLIND_SCORE, pa.float32()),
        (BLIND_SCORE_REFINED, pa.float32()),
        (FILTER_REASON, pa.string()),  # blind_too_easy, or null when kept
    ]
)

METRICS_SCHEMA = pa.schema(
    [
        (RUN_ID, pa.string()),
        (SPLIT, pa.string()),
        (STEP, pa.int64()),
        (NAME, pa.string()),
        (VALUE, pa.float64()),
    ]
)

RUNS_SCHEMA = pa.schema(
    [
        (RUN_ID, pa.string()),
        ("started_at", pa.string()),
        ("config", pa.string()),
        ("checkpoint", pa.string()),
        ("steps", pa.int64()),
        ("samples_per_second", pa.float64()),
    ]
)


def embeddings_schema(dim: int) -> pa.Schema:
    """Vectors are L2-normalised and stored as float16: half the bytes, ample for cosine search."""
    return pa.schema(
        [
            (SAMPLE_ID, pa.string()),
            (IMAGE_EMBEDDING, pa.list_(pa.float16(), dim)),
            (TEXT_EMBEDDING, pa.list_(pa.float16(), dim)),
            (CLIP_SCORE, pa.float32()),
            (MODEL, pa.string()),
        ]
    )


def sample_id(url: str, caption: str | None) -> str:
    """Stable row key: the same (url, caption) pair always gets the same id, across reruns."""
    h = hashlib.blake2b(digest_size=8)
    h.update(url.encode("utf-8", "surrogatepass"))
    h.update(b"\x00")
    h.update((caption or "").encode("utf-8", "surrogatepass"))
    return h.hexdigest()
