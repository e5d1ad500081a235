"""Crawl stage: download and resize images for a shard of (url, caption) rows with img2dataset.

Each shard runs img2dataset's own `Downloader` (its thread pool, urllib fetching, X-Robots-Tag
opt-out check, resizer and sha256) in the calling process; rows are collected in memory instead
of written by img2dataset, so that foil's store writes the shard atomically, in input order, with
one row per input url whatever happened to it. The shard is the unit of retry: if img2dataset
reports the shard as failed, `process` raises and the runner records and retries it.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.feather as feather

from pipeline import schema as S
from pipeline.stage import ConfigError, Stage, register

# img2dataset's message for a refused X-Robots-Tag; mapped to its own status so opt-outs are counted.
_OPT_OUT_MESSAGE = "disallowed by X-Robots-Tag"

RESIZE_MODES = ("no", "keep_ratio", "center_crop", "border")
ENCODE_FORMATS = ("jpg", "png", "webp")


class CrawlShardError(RuntimeError):
    """img2dataset gave up on a whole shard; the runner retries it."""


def _status_of(img2dataset_status: str | None, error: str | None) -> str:
    if img2dataset_status == S.STATUS_SUCCESS:
        return S.STATUS_SUCCESS
    if error and _OPT_OUT_MESSAGE in error:
        return "opted_out"
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
        encode_quality: int = 95,
        thread_count: int = 32,
        timeout: float = 10,
        retries: int = 0,
        max_image_area: float = 8192 * 8192,
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
        if encode_format == "png" and not 0 <= encode_quality <= 9:
            raise ConfigError("crawl.encode_quality: for png it is a compression level from 0 to 9")
        self.image_size = image_size
        self.resize_mode = resize_mode
        self.encode_format = encode_format
        self.encode_quality = encode_quality
        self.thread_count = thread_count
        self.timeout = timeout
        self.retries = retries
        self.max_image_area = max_image_area
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
            "max_image_area": self.max_image_area,
            "disallowed_header_directives": list(self.disallowed_header_directives),
            "user_agent_token": self.user_agent_token,
        }

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
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
            max_image_area=self.max_image_area,
        )
        with tempfile.TemporaryDirectory(prefix="foil-crawl-") as tmp:
            shard_file = os.path.join(tmp, "shard.feather")
            table = pa.Table.from_batches([batch]).select([S.URL, S.CAPTION, S.SAMPLE_ID])
            feather.write_feather(table, shard_file)
            downloader = Downloader(
                sample_writer_class=_Collector,
                resizer=resizer,
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

        out: dict[str, list[Any]] = {name: [] for name in S.RAW_SCHEMA.names}
        ids = batch.column(S.SAMPLE_ID).to_pylist()
        urls = batch.column(S.URL).to_pylist()
        captions = batch.column(S.CAPTION).to_pylist()
        for sid, url, caption in zip(ids, urls, captions):
            img, meta = collected.get(sid, (None, {"status": "lost", "error_message": "no result from downloader"}))
            status = _status_of(meta.get("status"), meta.get("error_message"))
            self.count(f"status:{status}")
            out[S.SAMPLE_ID].append(sid)
            out[S.URL].append(url)
            out[S.CAPTION].append(caption)
            out[S.STATUS].append(status)
            out[S.ERROR].append(meta.get("error_message") if status != S.STATUS_SUCCESS else None)
            out[S.WIDTH].append(meta.get("width"))
            out[S.HEIGHT].append(meta.get("height"))
            out[S.ORIGINAL_WIDTH].append(meta.get("original_width"))
            out[S.ORIGINAL_HEIGHT].append(meta.get("original_height"))
            out[S.SHA256].append(meta.get("sha256"))
            out[S.IMAGE].append(img if status == S.STATUS_SUCCESS else None)
        yield pa.RecordBatch.from_pydict(out, schema=S.RAW_SCHEMA)
