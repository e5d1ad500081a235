"""Crawl stage: download and resize images for a shard of (url, caption) rows with img2dataset.

Each shard runs img2dataset's own `Downloader` (its thread pool, urllib fetching, X-Robots-Tag
opt-out check, resizer and sha256) in the calling process, behind foil's guards (pipeline/fetch.py:
http(s) only, no private addresses unless allowed, byte, time and pixel caps). Rows are collected
in memory instead of written by img2dataset, so that foil's store writes the shard atomically, in
input order, with one row per input url whatever happened to it: a status, and for failures the
error text and a short `error_kind`. The shard is the unit of retry: if img2dataset reports the
shard as failed, `process` raises and the runner records and retries it.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.feather as feather

from pipeline import schema as S
from pipeline.fetch import FetchPolicy, PixelGuard, guarded_opener, installed, url_problem
from pipeline.stage import ConfigError, Stage, register

# img2dataset's message for a refused X-Robots-Tag; mapped to its own status so opt-outs are counted.
_OPT_OUT_MESSAGE = "disallowed by X-Robots-Tag"

STATUSES = ("success", "failed_to_download", "failed_to_resize", "opted_out", "blocked_address", "too_large", "invalid_url")

# (pattern in the error text, kind), first match wins; img2dataset and urllib give free text.
_ERROR_KINDS = [
    ("foil:blocked_address", "blocked_address"),
    ("foil:too_large", "too_large"),
    ("foil:too_many_pixels", "too_many_pixels"),
    ("foil:too_slow", "too_slow"),
    ("foil:invalid_url", "invalid_url"),
    ("x-robots-tag", "opt_out"),
    ("infinite loop", "redirect_loop"),
    ("timed out", "timeout"),
    ("connection refused", "connection_refused"),
    ("incompleteread", "truncated"),
    ("cannot resolve", "dns"),
    ("certificate", "tls"),
]
_HTTP_ERROR = re.compile(r"http error (\d{3})")

RESIZE_MODES = ("no", "keep_ratio", "center_crop", "border")
ENCODE_FORMATS = ("jpg", "png", "webp")


class CrawlShardError(RuntimeError):
    """img2dataset gave up on a whole shard; the runner retries it."""


def error_kind(status: str, error: str | None) -> str | None:
    """A short, groupable name for why a row failed (the full text stays in `error`)."""
    if status == S.STATUS_SUCCESS:
        return None
    text = (error or "").lower()
    for pattern, kind in _ERROR_KINDS:
        if pattern in text:
            return kind
    match = _HTTP_ERROR.search(text)
    if match:
        return f"http_{match.group(1)}"
    if status == "invalid_url":
        return "invalid_url"
    return "decode_error" if status == "failed_to_resize" else "other"


def _status_of(img2dataset_status: str | None, error: str | None) -> str:
    if img2dataset_status == S.STATUS_SUCCESS:
        return S.STATUS_SUCCESS
    text = error or ""
    if _OPT_OUT_MESSAGE in text:
        return "opted_out"
    if "foil:blocked_address" in text:
        return "blocked_address"
    if "foil:too_large" in text or "foil:too_many_pixels" in text:
        return "too_large"
    if "foil:invalid_url" in text:
        return "invalid_url"
    return img2dataset_status or "failed_to_download"


@register
class CrawlStage(Stage):
    """Download, check and resize images. One output row per input row, with a status."""

    name = "crawl"
    output_schema = S.RAW_SCHEMA
    input_columns = [S.SAMPLE_ID, S.URL, S.CAPTION]
    batch_rows = None  # one img2dataset call per shard keeps its thread pool busy

    def __init__(
        self,
        image_size: int = 224,
        resize_mode: str = "center_crop",
        encode_format: str = "jpg",
        encode_quality: int | None = None,
        thread_count: int = 32,
        timeout: float = 10,
        retries: int = 0,
        max_bytes: int = 16 << 20,
        max_pixels: int = 8192 * 8192,
        max_seconds_per_image: float = 30.0,
        allow_private_addresses: bool = False,
        disallowed_header_directives: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex"),
        user_agent_token: str = "foil",
    ):
        super().__init__()
        if resize_mode not in RESIZE_MODES:
            raise ConfigError(f"crawl.resize_mode: {resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        if encode_format not in ENCODE_FORMATS:
            raise ConfigError(f"crawl.encode_format: {encode_format!r} is not one of {', '.join(ENCODE_FORMATS)}")
        if not isinstance(image_size, int) or image_size <= 0:
            raise ConfigError(f"crawl.image_size: must be a positive integer, got {image_size!r}")
        if encode_quality is None:  # png's "quality" is a compression level; jpg/webp's is 0-100
            encode_quality = 6 if encode_format == "png" else 95
        if encode_format == "png" and not 0 <= encode_quality <= 9:
            raise ConfigError("crawl.encode_quality: for png it is a compression level from 0 to 9")
        if encode_format != "png" and not 0 <= encode_quality <= 100:
            raise ConfigError(f"crawl.encode_quality: for {encode_format} it is a quality from 0 to 100")
        for name, value in (("max_bytes", max_bytes), ("max_pixels", max_pixels), ("max_seconds_per_image", max_seconds_per_image), ("timeout", timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"crawl.{name}: must be a positive number, got {value!r}")
        if not isinstance(allow_private_addresses, bool):
            raise ConfigError(f"crawl.allow_private_addresses: must be true or false, got {allow_private_addresses!r}")
        self.image_size = image_size
        self.resize_mode = resize_mode
        self.encode_format = encode_format
        self.encode_quality = encode_quality
        self.thread_count = thread_count
        self.timeout = timeout
        self.retries = retries
        self.policy = FetchPolicy(allow_private=allow_private_addresses, max_bytes=int(max_bytes), deadline_s=float(max_seconds_per_image))
        self.max_pixels = int(max_pixels)
        self.disallowed_header_directives = tuple(disallowed_header_directives)
        self.user_agent_token = user_agent_token

    def config(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "resize_mode": self.resize_mode,
            "encode_format": self.encode_format,
            "encode_quality": self.encode_quality,
            "thread_count": self.thread_count,
            "timeout": self.timeout,
            "retries": self.retries,
            "max_bytes": self.policy.max_bytes,
            "max_pixels": self.max_pixels,
            "max_seconds_per_image": self.policy.deadline_s,
            "allow_private_addresses": self.policy.allow_private,
            "disallowed_header_directives": list(self.disallowed_header_directives),
            "user_agent_token": self.user_agent_token,
        }

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        ids = batch.column(S.SAMPLE_ID).to_pylist()
        urls = batch.column(S.URL).to_pylist()
        captions = batch.column(S.CAPTION).to_pylist()
        invalid = {sid: problem for sid, url in zip(ids, urls) if (problem := url_problem(url))}
        fetchable = [i for i, sid in enumerate(ids) if sid not in invalid]
        collected = self._download(batch.take(pa.array(fetchable, pa.int64()))) if fetchable else {}

        out: dict[str, list[Any]] = {name: [] for name in S.RAW_SCHEMA.names}
        for sid, url, caption in zip(ids, urls, captions):
            if sid in invalid:
                img, meta = None, {"status": "invalid_url", "error_message": f"foil:invalid_url {invalid[sid]}"}
            else:
                img, meta = collected.get(sid, (None, {"status": "lost", "error_message": "no result from downloader"}))
            status = _status_of(meta.get("status"), meta.get("error_message"))
            self.count(f"status:{status}")
            error = meta.get("error_message") if status != S.STATUS_SUCCESS else None
            kind = error_kind(status, error)
            if kind:
                self.count(f"error_kind:{kind}")
            out[S.SAMPLE_ID].append(sid)
            out[S.URL].append(url)
            out[S.CAPTION].append(caption)
            out[S.STATUS].append(status)
            out[S.ERROR].append(error)
            out[S.ERROR_KIND].append(kind)
            out[S.WIDTH].append(meta.get("width"))
            out[S.HEIGHT].append(meta.get("height"))
            out[S.ORIGINAL_WIDTH].append(meta.get("original_width"))
            out[S.ORIGINAL_HEIGHT].append(meta.get("original_height"))
            out[S.SHA256].append(meta.get("sha256"))
            out[S.IMAGE].append(img if status == S.STATUS_SUCCESS else None)
        yield pa.RecordBatch.from_pydict(out, schema=S.RAW_SCHEMA)

    def _download(self, batch: pa.RecordBatch) -> dict[str, tuple[bytes | None, dict[str, Any]]]:
        """Run img2dataset's downloader over `batch`; returns {sample_id: (image, meta)}."""
        from img2dataset.downloader import Downloader
        from img2dataset.resizer import Resizer

        collected: dict[str, tuple[bytes | None, dict[str, Any]]] = {}

        class _Collector:
            # img2dataset's sample-writer interface; keeps rows for foil's own atomic writer.
            def __init__(self, *args: Any) -> None:
                pass

            def write(self, img: bytes | None, key: str, caption: str | None, meta: dict[str, Any]) -> None:
                collected[meta[S.SAMPLE_ID]] = (img, meta)

            def close(self) -> None:
                pass

        resizer = Resizer(
            image_size=self.image_size,
            resize_mode=self.resize_mode,
            resize_only_if_bigger=False,
            encode_quality=self.encode_quality,
            encode_format=self.encode_format,
        )
        with tempfile.TemporaryDirectory(prefix="foil-crawl-") as tmp, installed(guarded_opener(self.policy)):
            shard_file = os.path.join(tmp, "shard.feather")
            table = pa.Table.from_batches([batch]).select([S.URL, S.CAPTION, S.SAMPLE_ID])
            feather.write_feather(table, shard_file)
            downloader = Downloader(
                sample_writer_class=_Collector,
                resizer=PixelGuard(resizer, self.max_pixels),
                thread_count=self.thread_count,
                save_caption=True,
                extract_exif=False,
                output_folder=tmp,
                column_list=[S.URL, S.CAPTION, S.SAMPLE_ID],
                timeout=self.timeout,
                number_sample_per_shard=max(batch.num_rows, 10),
                oom_shard_count=5,
                compute_hash="sha256",
                verify_hash_type=None,
                encode_format=self.encode_format,
                retries=self.retries,
                user_agent_token=self.user_agent_token,
                disallowed_header_directives=list(self.disallowed_header_directives) or None,
            )
            ok, _ = downloader((0, shard_file))
        if not ok:
            raise CrawlShardError(f"img2dataset failed the shard of {batch.num_rows} rows")
        return collected
