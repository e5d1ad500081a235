"""Crawl stage: download, check and resize the images of a shard of (url, caption) rows.

foil fetches with its own scheduler over a thread pool and resizes as img2dataset's `Resizer` does
(pipeline/crawl/resize.py: the same bytes out, at half the cost).
Requests go through foil's guarded opener (pipeline/crawl/fetch.py: http(s) only, no private
addresses unless that exact address is allowed, byte, time and pixel caps), used directly and
never installed process-wide. The scheduler is polite per host (scheme://host:port):

- robots.txt is fetched once per host and cached for the shard (each shard of a run reads it
  again, once); rows it disallows for foil's token get `robots_disallowed` and no request.
  A `Crawl-delay` slows the host down (at most one request per 60 s is asked for).
- `per_host.max_concurrent` requests in flight and `per_host.max_per_second` request starts per
  host, across all threads of the shard. A shard runs in one process, so the caps hold per
  shard; on a cluster, shard url lists by host (one host's urls in one shard) for them to hold
  per host overall.
- A 429, or a 503 with `Retry-After`, pauses the host that long (at most
  `per_host.max_retry_after_s`, 2^n s without the header), halves the requests it may have in
  flight for the rest of the shard, and the row is tried again (`per_host.max_rate_limited_retries`
  times); other transient failures pause the host briefly, doubling, and are retried `retries`
  times. After `per_host.max_consecutive_failures` transient failures in a row the
  host is given up: its remaining rows get `host_backoff`, they are not waited on.
- A shard running past `shard_deadline_s` is cut: rows not finished by then get `timeout_shard`,
  the finished ones are kept.

Rows come out in input order, one per input url whatever happened to it: a status, and for
failures the error text and a short `error_kind` (classed transient or permanent by
`error_class`). A row whose list gave a sha256 (`expected_sha256`, DataComp) is checked against
the downloaded bytes; a mismatch gets `sha256_mismatch` (permanent) and no image. The list's
kept columns (`extra`, a JSON object) are carried into `raw` as they are. Opt-out signals (`X-Robots-Tag` noai / noimageai / noindex / noimageindex / noml
and `tdm-reservation: 1`) are counted by name in the stage's counts (`opt_out:noai`).
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import urlsplit

import pyarrow as pa

from pipeline.core import schema as S
from pipeline.core.stage import ConfigError, Stage, register
from pipeline.crawl.fetch import (
    OPT_OUT_DIRECTIVES,
    USER_AGENT_TOKEN,
    FetchPolicy,
    Fetched,
    Robots,
    fetch,
    fetch_robots,
    guarded_opener,
    pixel_problem,
    url_problem,
    user_agent,
)
from pipeline.crawl.resize import ENCODE_FORMATS, MODES, Resizer

# Row statuses. `failed_to_download` and `failed_to_resize` keep img2dataset's names.
STATUSES = (
    "success", "failed_to_download", "failed_to_resize", "opted_out", "blocked_address", "too_large", "invalid_url",
    "robots_disallowed", "host_backoff", "timeout_shard", "sha256_mismatch",
)
# Statuses of rows foil refused to fetch on purpose (what `foil crawl` reports as refused).
REFUSED_STATUSES = ("blocked_address", "invalid_url", "robots_disallowed", "opted_out", "too_large")

# error_kind -> status, for kinds that have a status of their own; others are failed_to_download.
_KIND_STATUS = {
    "blocked_address": "blocked_address",
    "invalid_url": "invalid_url",
    "too_large": "too_large",
    "too_many_pixels": "too_large",
    "opt_out": "opted_out",
    "robots_disallowed": "robots_disallowed",
    "host_backoff": "host_backoff",
    "timeout_shard": "timeout_shard",
    "decode_error": "failed_to_resize",
    "sha256_mismatch": "sha256_mismatch",
}

# Transient kinds may succeed if tried again later; every other kind is permanent.
_TRANSIENT = {
    "timeout", "connection_reset", "connection_refused", "connection_error", "truncated", "too_slow", "dns",
    "host_backoff", "timeout_shard", "http_408", "http_425", "http_429",
} | {f"http_{code}" for code in range(500, 600)}
TRANSIENT, PERMANENT = "transient", "permanent"
# Kinds that tell something about the host rather than the url: they count towards its back-off.
_HOST_TROUBLE = _TRANSIENT - {"host_backoff", "timeout_shard", "http_408"}
_RATE_LIMITED = {"http_429", "http_503"}


def error_class(kind: str | None) -> str | None:
    """`transient` (timeout, reset, 5xx, 429: worth retrying) or `permanent` (404, opt-out, decode
    error, blocked, ...); None for a success. A lookup on the kind, no text parsing."""
    if kind is None:
        return None
    return TRANSIENT if kind in _TRANSIENT else PERMANENT


# For error texts that do not come with an exception (free text): (pattern, kind), first match wins.
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


class CrawlShardError(RuntimeError):
    """The shard could not be crawled at all; the runner retries it."""


def error_kind(status: str, error: str | None) -> str | None:
    """A kind for a free-text error (what the fetcher's exceptions do not already name)."""
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


def status_of(kind: str | None) -> str:
    return S.STATUS_SUCCESS if kind is None else _KIND_STATUS.get(kind, "failed_to_download")


@dataclass(frozen=True)
class HostLimits:
    """Politeness per host (`crawl.params.per_host`). None: no cap."""

    max_concurrent: int | None = None
    max_per_second: float | None = None
    max_consecutive_failures: int = 10
    max_retry_after_s: float = 60.0
    max_rate_limited_retries: int = 5

    @classmethod
    def parse(cls, data: dict[str, Any] | None) -> "HostLimits":
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ConfigError(f"crawl.per_host: must be a mapping ({', '.join(cls.__dataclass_fields__)}), got {data!r}")
        for key, value in data.items():
            if key not in cls.__dataclass_fields__:
                raise ConfigError(f"crawl.per_host.{key}: unknown field; known: {', '.join(cls.__dataclass_fields__)}")
            nullable = key in ("max_concurrent", "max_per_second")
            if value is None and nullable:
                continue
            integral = key in ("max_concurrent", "max_consecutive_failures", "max_rate_limited_retries")
            ok = not isinstance(value, bool) and isinstance(value, int if integral else (int, float))
            if not ok or value < (0 if key == "max_rate_limited_retries" else 1 if integral else 0) or (not integral and value <= 0 and key != "max_retry_after_s"):
                kind = "integer" if integral else "number"
                raise ConfigError(f"crawl.per_host.{key}: must be a positive {kind}{' or null' if nullable else ''}, got {value!r}")
        return cls(**data)


@dataclass
class _Host:
    origin: str  # scheme://host:port: what robots.txt and the caps apply to
    queue: deque = field(default_factory=deque)  # row indices still to fetch
    in_flight: int = 0
    not_before: float = 0.0  # monotonic time before which no request starts (Retry-After, back-off)
    last_start: float = float("-inf")
    min_interval: float = 0.0
    robots: Robots | None = None
    robots_pending: bool = False
    failures: int = 0  # consecutive transient failures
    given_up: bool = False
    cap: int | None = None  # requests in flight allowed now: per_host.max_concurrent, halved by each 429
    paused_at: float = float("-inf")  # when a 429/503 last paused the host


@dataclass
class _Result:
    kind: str | None
    error: str | None = None
    image: bytes | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    sha256: str | None = None


@register
class CrawlStage(Stage):
    """Download, check and resize images. One output row per input row, with a status."""

    name = "crawl"
    output_schema = S.CRAWLED_RAW_SCHEMA
    input_columns = None  # all of `urls`: tables ingested before expected_sha256 / extra lack them
    batch_rows = None  # the whole shard at once keeps the thread pool busy
    # Fetch threads wait on the network and OpenCV lets go of the GIL while it decodes, resizes
    # and encodes: one process keeps two cores busy (6,000 loopback urls on 2 cores: 520 images/s
    # in process, 466 on a Ray it starts; tests/benchmarks/crawl.py --urls 6000).
    process_cores = 2

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
        allow_addresses: list[str] | tuple[str, ...] = (),
        disallowed_header_directives: tuple[str, ...] = OPT_OUT_DIRECTIVES,
        user_agent_token: str = USER_AGENT_TOKEN,
        user_agent_contact: str | None = None,
        respect_robots_txt: bool = True,
        per_host: dict[str, Any] | None = None,
        shard_deadline_s: float | None = None,
    ):
        super().__init__()
        if resize_mode not in MODES:
            raise ConfigError(f"crawl.resize_mode: {resize_mode!r} is not one of {', '.join(MODES)}")
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
        numbers = [("max_bytes", max_bytes), ("max_pixels", max_pixels), ("max_seconds_per_image", max_seconds_per_image), ("timeout", timeout), ("thread_count", thread_count)]
        if shard_deadline_s is not None:
            numbers.append(("shard_deadline_s", shard_deadline_s))
        for name, value in numbers:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"crawl.{name}: must be a positive number, got {value!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"crawl.retries: must be a non-negative integer, got {retries!r}")
        for name, flag in (("allow_private_addresses", allow_private_addresses), ("respect_robots_txt", respect_robots_txt)):
            if not isinstance(flag, bool):
                raise ConfigError(f"crawl.{name}: must be true or false, got {flag!r}")
        if isinstance(allow_addresses, str) or not isinstance(allow_addresses, (list, tuple)):
            raise ConfigError(f"crawl.allow_addresses: must be a list of ADDRESS:PORT, got {allow_addresses!r}")
        try:
            allowed = FetchPolicy.parse_addresses(allow_addresses)
        except ValueError as exc:
            raise ConfigError(f"crawl.allow_addresses: {exc}") from None
        if user_agent_contact is not None and not (isinstance(user_agent_contact, str) and user_agent_contact.strip()):
            raise ConfigError(f"crawl.user_agent_contact: must be a url or e-mail address, got {user_agent_contact!r}")
        self.image_size = image_size
        self.resize_mode = resize_mode
        self.encode_format = encode_format
        self.encode_quality = encode_quality
        self.thread_count = int(thread_count)
        self.timeout = timeout
        self.retries = retries
        self.allow_addresses = sorted(str(a) for a in allow_addresses)
        self.policy = FetchPolicy(allow_private=allow_private_addresses, allow_addresses=allowed, max_bytes=int(max_bytes), deadline_s=float(max_seconds_per_image))
        self.max_pixels = int(max_pixels)
        self.disallowed_header_directives = tuple(d.strip().lower() for d in disallowed_header_directives)
        self.user_agent_token = user_agent_token.strip().lower()
        self.user_agent_contact = user_agent_contact
        self.user_agent = user_agent(user_agent_contact)
        self.respect_robots_txt = respect_robots_txt
        self.per_host = HostLimits.parse(per_host)
        self.shard_deadline_s = shard_deadline_s

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
            "allow_addresses": self.allow_addresses,
            "disallowed_header_directives": list(self.disallowed_header_directives),
            "user_agent_token": self.user_agent_token,
            "user_agent": self.user_agent,
            "respect_robots_txt": self.respect_robots_txt,
            "per_host": vars(self.per_host),
            "shard_deadline_s": self.shard_deadline_s,
        }

    def process(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        ids = batch.column(S.SAMPLE_ID).to_pylist()
        urls = batch.column(S.URL).to_pylist()
        captions = batch.column(S.CAPTION).to_pylist()
        names = batch.schema.names
        nothing = [None] * batch.num_rows
        expected = batch.column(S.EXPECTED_SHA256).to_pylist() if S.EXPECTED_SHA256 in names else nothing
        extras = batch.column(S.EXTRA).to_pylist() if S.EXTRA in names else nothing
        results: dict[int, _Result] = {}
        for i, url in enumerate(urls):
            problem = url_problem(url)
            if problem:
                results[i] = _Result("invalid_url", f"foil:invalid_url {problem}")
        fetchable = [i for i in range(len(urls)) if i not in results]
        if fetchable:
            results.update(_ShardCrawl(self, urls, fetchable).run())

        out: dict[str, list[Any]] = {name: [] for name in S.CRAWLED_RAW_SCHEMA.names}
        for i, (sid, url, caption) in enumerate(zip(ids, urls, captions)):
            r = results.get(i) or _Result("other", "no result from the fetcher")
            if r.kind is None and expected[i] and r.sha256 != expected[i]:
                self.count("sha256_checked")
                r = _Result("sha256_mismatch", f"downloaded bytes have sha256 {r.sha256}, the list gives {expected[i]}", sha256=r.sha256)
            elif r.kind is None and expected[i]:
                self.count("sha256_checked")
            status = status_of(r.kind)
            self.count(f"status:{status}")
            if r.kind:
                self.count(f"error_kind:{r.kind}")
                self.count(f"error_class:{error_class(r.kind)}")
            out[S.SAMPLE_ID].append(sid)
            out[S.URL].append(url)
            out[S.CAPTION].append(caption)
            out[S.STATUS].append(status)
            out[S.ERROR].append(r.error if r.kind else None)
            out[S.ERROR_KIND].append(r.kind)
            out[S.WIDTH].append(r.width)
            out[S.HEIGHT].append(r.height)
            out[S.ORIGINAL_WIDTH].append(r.original_width)
            out[S.ORIGINAL_HEIGHT].append(r.original_height)
            out[S.SHA256].append(r.sha256)
            out[S.EXTRA].append(extras[i])
            out[S.IMAGE].append(r.image if r.kind is None else None)
        yield pa.RecordBatch.from_pydict(out, schema=S.CRAWLED_RAW_SCHEMA)


class _ShardCrawl:
    """One shard's fetches: a dispatcher (the calling thread) hands rows to a thread pool when
    their host has a free slot and its pace allows; workers report back under one condition."""

    def __init__(self, stage: CrawlStage, urls: list[str], rows: list[int]):
        self.stage = stage
        self.limits = stage.per_host
        self.urls = urls
        self.rows = rows
        self.opener = guarded_opener(stage.policy)
        self.resizer = Resizer(stage.image_size, stage.resize_mode, stage.encode_format, stage.encode_quality)
        self.hosts: dict[str, _Host] = {}
        for i in rows:
            parts = urlsplit(urls[i])
            origin = f"{parts.scheme.lower()}://{parts.netloc.lower().rsplit('@', 1)[-1]}"
            self.hosts.setdefault(origin, _Host(origin)).queue.append(i)
        for host in self.hosts.values():
            if self.limits.max_per_second:
                host.min_interval = 1.0 / self.limits.max_per_second
            host.cap = self.limits.max_concurrent
            if not stage.respect_robots_txt:
                host.robots = Robots()
        self.attempts: dict[int, int] = {}
        self.results: dict[int, _Result] = {}
        self.busy = 0  # worker threads in use (fetching or resizing)
        self.closed = False
        self.cond = threading.Condition()

    # -- the dispatcher ------------------------------------------------------------------------
    def run(self) -> dict[int, _Result]:
        start = time.monotonic()
        deadline = start + self.stage.shard_deadline_s if self.stage.shard_deadline_s else float("inf")
        pool = ThreadPoolExecutor(self.stage.thread_count, thread_name_prefix="foil-crawl")
        order = list(self.hosts.values())
        turn = 0
        try:
            with self.cond:
                while True:
                    now = time.monotonic()
                    if now >= deadline:
                        break
                    if self.busy == 0 and not any(h.queue or h.robots_pending for h in order):
                        break
                    wake = deadline
                    dispatched = False
                    for k in range(len(order)):
                        if self.busy >= self.stage.thread_count:
                            break
                        host = order[(turn + k) % len(order)]
                        ready, at = self._next_for(host, now)
                        if ready is None:
                            wake = min(wake, at)
                            continue
                        host.in_flight += 1
                        host.last_start = now
                        self.busy += 1
                        dispatched = True
                        if ready == "robots":
                            host.robots_pending = True
                            pool.submit(self._robots, host)
                        else:
                            pool.submit(self._fetch, host, ready, now)
                    turn += 1
                    if not dispatched:
                        self.cond.wait(timeout=min(max(wake - now, 0.001), 1.0))
                self.closed = True  # late workers leave their results unread
                unfinished = [i for i in self.rows if i not in self.results]
                if unfinished:
                    self.stage.count("shards_cut")
                for i in unfinished:
                    self.results.setdefault(i, _Result("timeout_shard", f"shard deadline of {self.stage.shard_deadline_s:g} s passed before this row finished"))
                return dict(self.results)
        finally:
            # In-flight fetches end by themselves within max_seconds_per_image; nobody waits for them.
            pool.shutdown(wait=False, cancel_futures=True)

    def _next_for(self, host: _Host, now: float) -> tuple[int | str | None, float]:
        """What may start on `host` now (a row index, "robots", or None) and, if nothing, when to look again."""
        never = float("inf")
        if host.robots_pending or not host.queue:
            return None, never
        if host.cap is not None and host.in_flight >= host.cap:
            return None, never  # a finishing request wakes the dispatcher
        at = max(host.not_before, host.last_start + host.min_interval)
        if at > now:
            return None, at
        if host.robots is None:
            return "robots", never
        while host.queue:
            i = host.queue.popleft()
            if host.robots.error is not None:
                self._finish(i, _Result(host.robots.kind, host.robots.error))
            elif not host.robots.allows(self.urls[i], self.stage.user_agent_token):
                self._finish(i, _Result("robots_disallowed", f"robots.txt of {host.origin} disallows this path for {self.stage.user_agent_token!r}"))
            else:
                self.attempts[i] = self.attempts.get(i, 0) + 1
                return i, never
        return None, never

    def _finish(self, i: int, result: _Result) -> None:
        self.results[i] = result

    # -- workers -------------------------------------------------------------------------------
    def _robots(self, host: _Host) -> None:
        robots = Robots(error="robots.txt not read", kind="other")
        try:
            robots = fetch_robots(self.opener, host.origin, self.stage.user_agent, self.stage.timeout)
        finally:
            with self.cond:
                self.stage.count("robots_txt_fetched")
                host.robots = robots
                host.robots_pending = False
                host.in_flight -= 1
                self.busy -= 1
                delay = robots.crawl_delay(self.stage.user_agent_token)
                if delay:
                    host.min_interval = max(host.min_interval, min(delay, 60.0))
                self.cond.notify_all()

    def _fetch(self, host: _Host, i: int, started: float) -> None:
        result: _Result | None = None
        try:
            fetched = fetch(self.opener, self.urls[i], self.stage.user_agent, self.stage.timeout, self.stage.user_agent_token, self.stage.disallowed_header_directives)
        except BaseException as exc:  # noqa: BLE001  (a worker must always report back)
            fetched = Fetched(error=f"{type(exc).__name__}: {exc}", kind="other")
        with self.cond:
            host.in_flight -= 1
            self.stage.count("requests")
            for name in fetched.opt_outs:
                self.stage.count(f"opt_out:{name}")
            if fetched.body is None:
                result = self._failed(host, i, fetched, started)
            else:
                host.failures = 0
            self.cond.notify_all()
        if fetched.body is not None:
            result = self._decode(fetched.body)
        with self.cond:
            self.busy -= 1
            if result is not None and not self.closed:
                self._finish(i, result)
            self.cond.notify_all()

    def _failed(self, host: _Host, i: int, fetched: Fetched, started: float) -> _Result | None:
        """Book a failed request (under the lock); None when the row goes back in the queue."""
        kind = fetched.kind or "other"
        result = _Result(kind, fetched.error)
        if kind not in _HOST_TROUBLE:
            host.failures = 0  # the host answered: the url is at fault, not the host
            return result
        now = time.monotonic()
        if kind in _RATE_LIMITED and (fetched.retry_after is not None or kind == "http_429"):
            self.stage.count("rate_limited")
            if started > host.paused_at:
                # a new signal, not one more answer to requests sent before the last pause: it
                # counts as one failure, and the host gets half the requests in flight it had
                host.failures += 1
                host.cap = max(1, min(host.cap or self.stage.thread_count, (host.in_flight + 1) // 2))
                self.stage.count("host_slowed_down")
            host.paused_at = now
            wait = fetched.retry_after if fetched.retry_after is not None else min(2.0 ** host.failures, 30.0)
            host.not_before = max(host.not_before, now + min(wait, self.limits.max_retry_after_s))
            retry = self.attempts[i] <= self.limits.max_rate_limited_retries
        else:
            host.failures += 1
            host.not_before = max(host.not_before, now + min(0.1 * 2.0 ** (host.failures - 1), 10.0))
            retry = self.attempts[i] <= self.stage.retries
        if host.failures >= self.limits.max_consecutive_failures and not host.given_up:
            host.given_up = True
            self.stage.count("hosts_backed_off")
            for j in host.queue:
                self._finish(j, _Result("host_backoff", f"{host.origin} failed {host.failures} times in a row (last: {fetched.error}); not tried"))
            host.queue.clear()
            return result
        if retry and not host.given_up:
            host.queue.appendleft(i)
            self.stage.count("retried")
            return None
        return result

    def _decode(self, body: bytes) -> _Result:
        stream = io.BytesIO(body)
        problem = pixel_problem(stream, self.stage.max_pixels)
        if problem:
            return _Result("too_many_pixels", f"foil:too_many_pixels {problem}")
        try:
            img, width, height, original_width, original_height, error = self.resizer(body)
        except Exception as exc:  # noqa: BLE001
            img, error = None, f"{type(exc).__name__}: {exc}"
        if error is not None or img is None:
            return _Result("decode_error", error or "resizer returned no image")
        return _Result(None, None, img, width, height, original_width, original_height, hashlib.sha256(body).hexdigest())
