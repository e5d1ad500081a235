"""Score stage: rule scores and hashes for every crawled image, written first, decided on later.

Nothing is filtered here. Each successfully crawled row gets one score row (size, aspect ratio,
caption length, byte size, sha256, a 64-bit DCT perceptual hash, a 4x4 colour thumbnail, the
caption's language (langid.py's bundled model) and a flag for captions that describe nothing:
a file name, a url, markup or alt-text boilerplate ("image", "click here")); the curated view in SQL
applies thresholds, so changing a threshold never recomputes a score. Rows the crawl did not
fetch are counted (`not_crawled`) and get no score row. An image that does not decode gets a
score row with `decode_error` set, so it is removed by the view with that reason.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
from PIL import Image
from scipy.fft import dctn

from pipeline.core import schema as S
from pipeline.core.stage import Stage, register
from pipeline.models.images import on_white


def perceptual_hash(image: Image.Image) -> str:
    """64-bit pHash: sign of the low-frequency 8x8 DCT block of a 32x32 grey image vs its median."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float32)
    low = dctn(grey, norm="ortho")[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term is excluded from the median, as in pHash
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def color_thumb(image: Image.Image) -> str:
    """The image shrunk to 4x4 RGB, as hex (48 bytes). pHash ignores colour; this keeps it, so a
    red and a blue heart are not taken for near-duplicates."""
    return on_white(image).resize((4, 4), Image.Resampling.BOX).tobytes().hex()


def color_difference(a: str, b: str) -> int:
    """Largest per-channel difference (0-255) between two colour thumbnails."""
    return int(np.max(np.abs(np.frombuffer(bytes.fromhex(a), np.uint8).astype(int) - np.frombuffer(bytes.fromhex(b), np.uint8).astype(int))))


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


_IMAGE_FILE = re.compile(r"\.(jpe?g|png|gif|webp|bmp|tiff?|svg|heic)$", re.I)
_CAMERA_NAME = re.compile(r"^(img|dsc|dscn|dscf|pxl|mvimg|screenshot|screen shot|image|photo|pic|p)[\s_-]*\d{3,}", re.I)
_URL = re.compile(r"(https?://|www\.)\S+", re.I)
_MARKUP = re.compile(r"<[a-z/][^>]*>|&(nbsp|amp|quot|lt|gt|#\d+);", re.I)
BOILERPLATE = frozenset({
    "image", "images", "photo", "photos", "picture", "pic", "img", "logo", "icon", "thumbnail", "thumb",
    "untitled", "click here", "click to enlarge", "no image", "no image available", "image not found",
    "placeholder", "default", "banner", "spacer", "alt", "alt text", "null", "undefined", "none", "n/a",
    "loading", "advertisement", "ad", "button", "blank", "featured image", "header", "avatar", "profile picture",
})


def caption_flag(caption: str) -> str | None:
    """Why a caption describes nothing, or None: `filename` (IMG_2031.jpg, DSC00042), `url`,
    `markup` (HTML tags or entities) or `boilerplate` (a stock alt text such as "image")."""
    text = caption.strip()
    if _URL.search(text):
        return "url"
    if _MARKUP.search(text):
        return "markup"
    if _IMAGE_FILE.search(text) or _CAMERA_NAME.match(text) or (" " not in text and re.search(r"[_\d].*[_\d]", text) and re.search(r"\d", text)):
        return "filename"
    if text.lower().strip(" .:!") in BOILERPLATE:
        return "boilerplate"
    return None


@register
class ScoreStage(Stage):
    name = "score"
    output_schema = S.SCORES_SCHEMA
    input_columns = [S.SAMPLE_ID, S.CAPTION, S.STATUS, S.IMAGE]
    reuse_instance = True  # the language model loads once per worker

    def __init__(self) -> None:
        super().__init__()
        self._language = None

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        if self._language is None:
            from pipeline.models.language import LanguageId

            self._language = LanguageId()
        out: dict[str, list[Any]] = {name: [] for name in S.SCORES_SCHEMA.names}
        for sid, caption, status, blob in zip(
            batch.column(S.SAMPLE_ID).to_pylist(),
            batch.column(S.CAPTION).to_pylist(),
            batch.column(S.STATUS).to_pylist(),
            batch.column(S.IMAGE).to_pylist(),
        ):
            if status != S.STATUS_SUCCESS or blob is None:
                self.drop("not_crawled")
                continue
            caption = caption or ""
            width = height = None
            phash = thumb = decode_error = None
            try:
                with Image.open(io.BytesIO(blob)) as img:
                    img.load()
                    width, height = img.size
                    phash = perceptual_hash(img)
                    thumb = color_thumb(img)
            except Exception as exc:  # PIL raises many types for corrupt data; record which
                decode_error = f"{type(exc).__name__}: {exc}"[:200]
                self.count("decode_error")
            out[S.SAMPLE_ID].append(sid)
            out[S.WIDTH].append(width)
            out[S.HEIGHT].append(height)
            out[S.ASPECT_RATIO].append(width / height if width and height else None)
            out[S.CAPTION_CHARS].append(len(caption))
            out[S.CAPTION_WORDS].append(len(caption.split()))
            out[S.IMAGE_BYTES].append(len(blob))
            out[S.SHA256].append(hashlib.sha256(blob).hexdigest())
            out[S.PHASH].append(phash)
            out[S.COLOR_THUMB].append(thumb)
            out[S.DECODE_ERROR].append(decode_error)
            language, probability = self._language.classify(caption) if caption.strip() else (None, None)
            out[S.LANGUAGE].append(language)
            out[S.LANGUAGE_SCORE].append(probability)
            flag = caption_flag(caption)
            out[S.CAPTION_FLAG].append(flag)
            if flag:
                self.count(f"caption_flag:{flag}")
        if out[S.SAMPLE_ID]:
            yield pa.RecordBatch.from_pydict(out, schema=S.SCORES_SCHEMA)
