"""Politeness and opt-outs against real HTTP servers on several loopback addresses.

Each server (127.0.0.2, 127.0.0.3, ...: on Linux every 127/8 address binds without set-up) is
one "host". The servers log every request, count requests in flight, and answer 429 with
`Retry-After` when a host's limit is exceeded, so the tests see exactly what the crawler sent.
"""

from __future__ import annotations

import http.server
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.core import schema as S
from pipeline.crawl.crawl import CrawlStage, error_class
from pipeline.demo.sample import IMAGE_SUBDIR, ImageServer

APPLE = "1f34e.png"


class HostLog:
    """What one host saw: request paths, user agents, the most requests in flight at once."""

    def __init__(self, limit: int | None = None, robots: str | None = None):
        self.limit = limit
        self.robots = robots
        self.lock = threading.Lock()
        self.paths: list[str] = []
        self.agents: list[str] = []
        self.starts: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.rejected = 0


def logging_handler(log: HostLog, delay: float = 0.0, routes: dict | None = None):
    """A handler serving the emoji folder; `routes` maps a path to a function(handler) -> bool
    (True: it answered)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            with log.lock:
                log.paths.append(self.path)
                log.agents.append(self.headers.get("User-Agent", ""))
                log.starts.append(time.monotonic())
                log.in_flight += 1
                log.max_in_flight = max(log.max_in_flight, log.in_flight)
                over = log.limit is not None and log.in_flight > log.limit
            try:
                if over:
                    with log.lock:
                        log.rejected += 1
                    self._answer(429, b"slow down", {"Retry-After": "1"})
                    return
                if self.path == "/robots.txt":
                    if log.robots is None:
                        self._answer(404, b"no robots.txt")
                    else:
                        self._answer(200, log.robots.encode(), {"Content-Type": "text/plain"})
                    return
                time.sleep(delay)  # requests overlap, so a cap that does not hold shows
                if routes and self.path in routes and routes[self.path](self):
                    return
                body = self._body()
            finally:
                with log.lock:  # counted out before the answer is sent: the client cannot overlap it
                    log.in_flight -= 1
            if body is None:
                self._answer(404, b"not found")
            else:
                self._answer(200, body, {"Content-Type": "image/png"})

        def _body(self) -> bytes | None:
            path = Path(self.directory) / IMAGE_SUBDIR / self.path.split("?")[0].rsplit("/", 1)[-1]
            return path.read_bytes() if path.is_file() else None

        def _answer(self, code: int, body: bytes, headers: dict | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _batch(urls):
    captions = [f"row {i}" for i in range(len(urls))]
    return pa.RecordBatch.from_pydict({S.SAMPLE_ID: [S.sample_id(u, c) for u, c in zip(urls, captions)], S.URL: urls, S.CAPTION: captions})


def _crawl(urls, servers, **params):
    defaults = dict(image_size=32, resize_mode="border", encode_format="png", encode_quality=6, thread_count=16, timeout=5)
    stage = CrawlStage(**{**defaults, "allow_addresses": [s.address for s in servers], **params})
    return pa.Table.from_batches(list(stage.run(iter([_batch(urls)])))), stage


def _image_urls(server, images, copies=1):
    return [f"{server.url}/{IMAGE_SUBDIR}/{img}?copy={c}" for c in range(copies) for img in images]


@pytest.fixture
def images(few_emoji):
    return [it.image for it in few_emoji[:12]]


def test_per_host_cap_holds_across_threads_on_three_hosts(emoji_dir, images):
    logs = [HostLog(limit=2) for _ in range(3)]
    servers = [ImageServer(emoji_dir, handler=logging_handler(log, delay=0.05), host=f"127.0.0.{i + 2}") for i, log in enumerate(logs)]
    with servers[0], servers[1], servers[2]:
        urls = [u for s in servers for u in _image_urls(s, images, copies=3)]
        out, stage = _crawl(urls, servers, thread_count=24, per_host={"max_concurrent": 2})
    assert [log.max_in_flight for log in logs] == [2, 2, 2]  # the cap, reached and never passed
    assert [log.rejected for log in logs] == [0, 0, 0]
    assert out[S.STATUS].to_pylist() == ["success"] * len(urls)
    assert stage.stats.counts["robots_txt_fetched"] == 3
    assert all(log.paths.count("/robots.txt") == 1 for log in logs)


def test_429_retry_after_pauses_the_host_and_the_crawl_completes(emoji_dir, images):
    # no cap configured: the server's limit of 2 is exceeded, it answers 429 + Retry-After: 1
    logs = [HostLog(limit=2) for _ in range(2)]
    servers = [ImageServer(emoji_dir, handler=logging_handler(log, delay=0.05), host=f"127.0.0.{i + 5}") for i, log in enumerate(logs)]
    with servers[0], servers[1]:
        urls = [u for s in servers for u in _image_urls(s, images)]
        start = time.monotonic()
        out, stage = _crawl(urls, servers, thread_count=16, per_host={"max_rate_limited_retries": 10})
        seconds = time.monotonic() - start
    assert out[S.STATUS].to_pylist() == ["success"] * len(urls)  # every good image, in the end
    assert sum(log.rejected for log in logs) > 0 and stage.stats.counts["rate_limited"] > 0
    assert seconds >= 1.0  # Retry-After: 1 was waited for
    assert stage.stats.counts["host_slowed_down"] >= 1 and "hosts_backed_off" not in stage.stats.counts


def test_max_per_second_spaces_request_starts(emoji_dir, images):
    log = HostLog()
    with ImageServer(emoji_dir, handler=logging_handler(log), host="127.0.0.7") as server:
        out, _ = _crawl(_image_urls(server, images[:8]), [server], per_host={"max_per_second": 20})
    assert out[S.STATUS].to_pylist() == ["success"] * 8
    assert log.paths[0] == "/robots.txt" and len(log.starts) == 9
    gaps = [b - a for a, b in zip(log.starts[1:], log.starts[2:])]  # between image requests
    assert min(gaps) >= 0.04  # 1/20 s, less scheduling jitter
    assert log.starts[-1] - log.starts[0] >= 8 * 0.05 * 0.9


def test_a_failing_host_is_backed_off_not_waited_on(emoji_dir):
    log = HostLog()
    always_503 = {f"/x/{i}.png": (lambda h: (h._answer(503, b"down"), True)[1]) for i in range(30)}
    with ImageServer(emoji_dir, handler=logging_handler(log, routes=always_503), host="127.0.0.8") as server:
        start = time.monotonic()
        out, stage = _crawl([f"{server.url}/x/{i}.png" for i in range(30)], [server], thread_count=2, per_host={"max_consecutive_failures": 3})
        seconds = time.monotonic() - start
    statuses = out[S.STATUS].to_pylist()
    assert statuses.count("host_backoff") >= 25 and set(statuses) == {"failed_to_download", "host_backoff"}
    assert set(out[S.ERROR_KIND].to_pylist()) == {"http_503", "host_backoff"}
    assert len(log.paths) <= 1 + 3 + 2  # robots.txt, the failures, what was in flight when it gave up
    assert stage.stats.counts["hosts_backed_off"] == 1 and seconds < 5


def test_robots_txt_is_read_once_and_disallowed_paths_get_no_request(emoji_dir, images):
    robots = "User-agent: otherbot\nDisallow: /\n\nUser-agent: foil\nDisallow: /private/\nAllow: /\n"
    log = HostLog(robots=robots)
    with ImageServer(emoji_dir, handler=logging_handler(log), host="127.0.0.9") as server:
        open_urls = _image_urls(server, images[:6])
        private = [f"{server.url}/private/{img}" for img in images[:5]]
        out, stage = _crawl(open_urls + private, [server], thread_count=8)
    assert out[S.STATUS].to_pylist() == ["success"] * 6 + ["robots_disallowed"] * 5
    assert set(out[S.ERROR_KIND].to_pylist()[6:]) == {"robots_disallowed"}
    assert log.paths.count("/robots.txt") == 1
    assert not [p for p in log.paths if p.startswith("/private/")]
    assert stage.stats.counts["status:robots_disallowed"] == 5


def test_robots_txt_that_disallows_everything_for_foil(emoji_dir, images):
    log = HostLog(robots="User-agent: *\nDisallow: /\n")
    with ImageServer(emoji_dir, handler=logging_handler(log), host="127.0.0.10") as server:
        out, _ = _crawl(_image_urls(server, images[:4]), [server])
    assert out[S.STATUS].to_pylist() == ["robots_disallowed"] * 4
    assert log.paths == ["/robots.txt"]


OPT_OUTS = [
    ({"X-Robots-Tag": "noai"}, ["noai"]),
    ({"X-Robots-Tag": "noimageai"}, ["noimageai"]),
    ({"X-Robots-Tag": "noindex"}, ["noindex"]),
    ({"X-Robots-Tag": "noimageindex"}, ["noimageindex"]),
    ({"X-Robots-Tag": "noml"}, ["noml"]),
    ({"X-Robots-Tag": "none"}, ["noindex"]),
    ({"X-Robots-Tag": "foil: noai, noimageai"}, ["noai", "noimageai"]),
    ({"tdm-reservation": "1"}, ["tdm-reservation"]),
    ({"X-Robots-Tag": "otherbot: noai"}, []),  # meant for another crawler
    ({"tdm-reservation": "0"}, []),
    ({"X-Robots-Tag": "nofollow"}, []),
]


def test_every_opt_out_header_is_honoured_and_counted_by_name(emoji_dir):
    apple = (emoji_dir / IMAGE_SUBDIR / APPLE).read_bytes()

    def answer(headers):
        return lambda h: (h._answer(200, apple, {"Content-Type": "image/png", **headers}), True)[1]

    routes = {f"/opt/{i}.png": answer(headers) for i, (headers, _) in enumerate(OPT_OUTS)}
    log = HostLog()
    with ImageServer(emoji_dir, handler=logging_handler(log, routes=routes), host="127.0.0.11") as server:
        out, stage = _crawl([f"{server.url}/opt/{i}.png" for i in range(len(OPT_OUTS))], [server])
    rows = out.to_pylist()
    for row, (headers, names) in zip(rows, OPT_OUTS):
        assert row[S.STATUS] == ("opted_out" if names else "success"), headers
        assert (row[S.IMAGE] is None) == bool(names)
        if names:
            assert row[S.ERROR_KIND] == "opt_out" and all(n in row[S.ERROR] for n in names)
    counts = stage.stats.counts
    expected: dict[str, int] = {}
    for _, names in OPT_OUTS:
        for n in names:
            expected[f"opt_out:{n}"] = expected.get(f"opt_out:{n}", 0) + 1
    assert {k: v for k, v in counts.items() if k.startswith("opt_out:")} == expected
    assert counts["status:opted_out"] == sum(1 for _, names in OPT_OUTS if names)


def test_user_agent_names_foil_and_the_recipe_contact(emoji_dir, images):
    log = HostLog()
    with ImageServer(emoji_dir, handler=logging_handler(log), host="127.0.0.12") as server:
        _crawl(_image_urls(server, images[:2]), [server], user_agent_contact="https://example.org/crawl-info")
    assert len(log.agents) == 3 and len(set(log.agents)) == 1
    agent = log.agents[0]
    assert agent.startswith("foil/") and "+https://example.org/crawl-info" in agent and "Mozilla" not in agent


def test_shard_deadline_cuts_the_slow_rows_and_keeps_the_rest(emoji_dir, images):
    apple = (emoji_dir / IMAGE_SUBDIR / APPLE).read_bytes()

    def slow(h):
        time.sleep(4)
        h._answer(200, apple, {"Content-Type": "image/png"})
        return True

    routes = {f"/slow/{i}.png": slow for i in range(3)}
    log = HostLog()
    with ImageServer(emoji_dir, handler=logging_handler(log, routes=routes), host="127.0.0.13") as server:
        urls = _image_urls(server, images[:6]) + [f"{server.url}/slow/{i}.png" for i in range(3)]
        start = time.monotonic()
        out, stage = _crawl(urls, [server], shard_deadline_s=1.5, timeout=10)
        seconds = time.monotonic() - start
    assert out[S.STATUS].to_pylist() == ["success"] * 6 + ["timeout_shard"] * 3
    assert set(out[S.ERROR_KIND].to_pylist()[6:]) == {"timeout_shard"}
    assert seconds < 3.5  # cut at the deadline, not when the slow answers come
    assert stage.stats.counts["shards_cut"] == 1


def test_the_guarded_opener_is_never_installed_process_wide(emoji_dir, images):
    before = urllib.request._opener
    log = HostLog()
    with ImageServer(emoji_dir, handler=logging_handler(log), host="127.0.0.14") as server:
        out, _ = _crawl(_image_urls(server, images[:2]), [server])
    assert out[S.STATUS].to_pylist() == ["success"] * 2
    assert urllib.request._opener is before


def test_only_the_allowed_address_and_port_may_be_reached(emoji_dir, images):
    allowed, other = HostLog(), HostLog()
    with ImageServer(emoji_dir, handler=logging_handler(allowed), host="127.0.0.15") as a, ImageServer(emoji_dir, handler=logging_handler(other), host="127.0.0.16") as b:
        out, _ = _crawl(_image_urls(a, images[:2]) + _image_urls(b, images[:2]), [a])
    assert out[S.STATUS].to_pylist() == ["success"] * 2 + ["blocked_address"] * 2
    assert other.paths == []


@pytest.mark.parametrize(
    "kind, cls",
    [("timeout", "transient"), ("connection_reset", "transient"), ("http_503", "transient"), ("http_500", "transient"),
     ("http_429", "transient"), ("host_backoff", "transient"), ("timeout_shard", "transient"), ("http_404", "permanent"),
     ("opt_out", "permanent"), ("decode_error", "permanent"), ("blocked_address", "permanent"),
     ("robots_disallowed", "permanent"), ("too_large", "permanent"), (None, None)],
)
def test_error_class(kind, cls):
    assert error_class(kind) == cls
