"""Guarded, polite fetching for the crawler: which addresses may be contacted, how much may be
read, what a response's opt-out headers say, and what each host's robots.txt allows.

- Only http and https. Host names are resolved and every address is checked *before* a socket is
  opened; the connection then goes to the checked address, so DNS cannot change the answer in
  between. Loopback, private, link-local, multicast, reserved and unspecified addresses are
  refused (`blocked_address`) unless the policy allows that exact `address:port`
  (`allow_addresses`: what the demo and the tests set for the server they started) or, for local
  testing only, every private address (`allow_private`). Redirects go through the same opener,
  so they are checked too.
- A declared Content-Length over `max_bytes` is refused before the body is read, and a body that
  grows past it is cut off (`too_large`). The whole body must arrive within `deadline_s`
  (`too_slow`): a server trickling bytes cannot hold a thread forever.
- `pixel_problem` reads an image's header (no decoding) and refuses more than `max_pixels`
  pixels before the resizer decodes it: decompression bombs stay small.
- The opener is used directly (`opener.open`), never installed as urllib's process-wide default,
  so nothing else in the process (another stage, another library) fetches through foil's policy
  or escapes it.
- Every failure carries a short `kind` (`timeout`, `http_429`, `blocked_address`, ...), taken
  from the exception's type, not from its text.
"""

from __future__ import annotations

import email.utils
import http.client
import io
import ipaddress
import socket
import ssl
import time
import urllib.error
import urllib.request
import urllib.robotparser
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from PIL import Image

ALLOWED_SCHEMES = ("http", "https")
USER_AGENT_TOKEN = "foil"  # the product token robots.txt groups and `X-Robots-Tag: foil: ...` name
# The opt-out set: X-Robots-Tag directives that refuse use of an image for AI training or indexing.
OPT_OUT_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex", "noml")
TDM_RESERVATION = "tdm-reservation"  # W3C TDM Reservation Protocol header; "1" reserves the rights
ROBOTS_MAX_BYTES = 500 << 10  # RFC 9309: crawlers must parse at least 500 KiB


class FetchRefused(OSError):
    """Raised inside urllib by foil's guards; `kind` says which guard."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"foil:{kind} {message}")
        self.kind = kind


def _parse_allowed(entry: str) -> tuple[str, int]:
    """'127.0.0.1:8741' or '[::1]:8741' -> (normalised address, port)."""
    host, sep, port = str(entry).rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{entry!r} is not ADDRESS:PORT")
    return str(ipaddress.ip_address(host.strip("[]"))), int(port)


@dataclass(frozen=True)
class FetchPolicy:
    allow_private: bool = False
    allow_addresses: frozenset[tuple[str, int]] = field(default_factory=frozenset)
    max_bytes: int = 16 << 20
    deadline_s: float = 30.0

    @staticmethod
    def parse_addresses(entries: list[str] | tuple[str, ...]) -> frozenset[tuple[str, int]]:
        return frozenset(_parse_allowed(e) for e in entries)

    def allows(self, ip: str, port: int) -> bool:
        return self.allow_private or (str(ipaddress.ip_address(ip.split("%", 1)[0])), port) in self.allow_addresses


def url_problem(url: str | None) -> str | None:
    """Why a url cannot be crawled at all, or None."""
    if not url:
        return "empty url"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        return f"unparsable url: {exc}"
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        return f"scheme {parts.scheme or '(none)'!r} is not http or https"
    if not parts.hostname:
        return "url has no host"
    return None


def address_problem(ip: str) -> str | None:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    for label, flag in (
        ("unspecified", addr.is_unspecified),
        ("loopback", addr.is_loopback),
        ("link-local", addr.is_link_local),
        ("private", addr.is_private),
        ("multicast", addr.is_multicast),
        ("reserved", addr.is_reserved),
    ):
        if flag:
            return label
    return None


def _checked_connection(host: str, port: int, timeout: float | None, policy: FetchPolicy) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchRefused("dns", f"cannot resolve {host}: {exc}") from None
    last: OSError | None = None
    for family, socktype, proto, _, sockaddr in infos:
        problem = address_problem(sockaddr[0])
        if problem and not policy.allows(sockaddr[0], port):
            raise FetchRefused("blocked_address", f"{host} resolves to {problem} address {sockaddr[0]}")
        sock = socket.socket(family, socktype, proto)
        try:
            if timeout is not None:
                sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or FetchRefused("dns", f"no address for {host}")


class CappedResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, policy: FetchPolicy, **kwargs: Any):
        super().__init__(sock, *args, **kwargs)
        self.policy = policy
        self.started = time.monotonic()

    def begin(self) -> None:
        super().begin()
        self.declared_length = self.length
        if self.length is not None and self.length > self.policy.max_bytes:
            raise FetchRefused("too_large", f"Content-Length {self.length} > {self.policy.max_bytes} bytes")

    def read(self, amt: int | None = None) -> bytes:
        if amt is not None:
            return super().read(amt)
        chunks, total = [], 0
        while True:
            if time.monotonic() - self.started > self.policy.deadline_s:
                raise FetchRefused("too_slow", f"body not complete after {self.policy.deadline_s:g} s")
            chunk = super().read(64 << 10)
            if not chunk:
                body = b"".join(chunks)
                # chunked reads end quietly when the server closes early; a short body is an error
                if self.declared_length is not None and total < self.declared_length:
                    raise http.client.IncompleteRead(body, self.declared_length - total)
                return body
            total += len(chunk)
            if total > self.policy.max_bytes:
                raise FetchRefused("too_large", f"body over {self.policy.max_bytes} bytes")
            chunks.append(chunk)


class _PolicyMixin:
    """Gives an http.client connection a policy and a capped response class."""

    def __init__(self, *args: Any, policy: FetchPolicy, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.policy = policy
        self.response_class = _response_factory(policy)


class _GuardedHTTPConnection(_PolicyMixin, http.client.HTTPConnection):
    def connect(self) -> None:
        self.sock = _checked_connection(self.host, self.port, self.timeout, self.policy)


class _GuardedHTTPSConnection(_PolicyMixin, http.client.HTTPSConnection):
    def connect(self) -> None:
        sock = _checked_connection(self.host, self.port, self.timeout, self.policy)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _response_factory(policy: FetchPolicy) -> Callable[..., CappedResponse]:
    def make(sock: socket.socket, *args: Any, **kwargs: Any) -> CappedResponse:
        return CappedResponse(sock, *args, policy=policy, **kwargs)

    return make


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self.policy = policy

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_GuardedHTTPConnection, req, policy=self.policy)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: FetchPolicy):
        super().__init__()
        self.policy = policy

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_GuardedHTTPSConnection, req, context=self._context, policy=self.policy)


class _NoOtherSchemes(urllib.request.BaseHandler):
    def unknown_open(self, req: urllib.request.Request) -> None:
        raise FetchRefused("invalid_url", f"scheme {req.type!r} is not http or https")


def guarded_opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    """An opener that only reaches what `policy` allows. Call its `open` directly; it is never
    installed as urllib's default. Handlers keep no per-request state, so threads may share it."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        _GuardedHTTPHandler(policy),
        _GuardedHTTPSHandler(policy),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.HTTPDefaultErrorHandler(),
        _NoOtherSchemes(),
    ):
        opener.add_handler(handler)
    return opener


def user_agent(contact: str | None) -> str:
    """An honest User-Agent: foil's product token and version, and who to contact."""
    try:
        from importlib.metadata import version

        release = version("foil")
    except Exception:  # not installed as a distribution (a bare checkout)
        release = "dev"
    about = f"+{contact}" if contact else "no contact set: crawl.params.user_agent_contact"
    return f"{USER_AGENT_TOKEN}/{release} (image-text dataset crawler; {about})"


# -- responses ---------------------------------------------------------------------------------
_VALUED_DIRECTIVES = ("unavailable_after", "max-snippet", "max-image-preview", "max-video-preview")


def opt_outs(headers: Any, token: str, directives: tuple[str, ...]) -> list[str]:
    """The opt-out signals in a response's headers, by name (`noai`, `tdm-reservation`, ...).

    `X-Robots-Tag: noai, noimageai` applies to every crawler, `X-Robots-Tag: foil: noai` to foil
    only, `X-Robots-Tag: otherbot: noai` not to foil; `none` means `noindex, nofollow`.
    """
    found: list[str] = []
    for value in headers.get_all("X-Robots-Tag") or []:
        agent, sep, rest = value.partition(":")
        agent = agent.strip().lower()
        if sep and "," not in agent and " " not in agent and agent not in _VALUED_DIRECTIVES:
            if agent != token:
                continue  # a directive group for another user agent
            value = rest
        names = [d.split(":", 1)[0].strip().lower() for d in value.split(",")]
        names = ["noindex" if d == "none" else d for d in names]
        found += [d for d in names if d in directives and d not in found]
    if (headers.get(TDM_RESERVATION) or "").strip() == "1":
        found.append(TDM_RESERVATION)
    return found


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds from now (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def exception_kind(exc: BaseException) -> str:
    """A short, groupable name for a fetch failure, from the exception's type."""
    while isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError) and isinstance(exc.reason, BaseException):
        exc = exc.reason  # urllib wraps what the connection raised
    if isinstance(exc, FetchRefused):
        return exc.kind
    if isinstance(exc, urllib.error.HTTPError):
        # HTTPRedirectHandler raises a 3xx only for a loop or too many redirects
        return "redirect_loop" if 300 <= exc.code < 400 else f"http_{exc.code}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, http.client.RemoteDisconnected)):
        return "connection_reset"
    if isinstance(exc, http.client.IncompleteRead):
        return "truncated"
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):
        return "tls"
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, (http.client.HTTPException, OSError)):
        return "connection_error"
    return "other"


@dataclass
class Fetched:
    """One request's outcome: a body, or an error with its kind."""

    body: bytes | None = None
    error: str | None = None
    kind: str | None = None
    opt_outs: list[str] = field(default_factory=list)
    retry_after: float | None = None  # seconds, from a 429/503's Retry-After


def fetch(opener: urllib.request.OpenerDirector, url: str, agent: str, timeout: float, token: str, directives: tuple[str, ...]) -> Fetched:
    """GET `url` through `opener`. Opt-out headers are read before the body, which is then skipped."""
    request = urllib.request.Request(url, headers={"User-Agent": agent})
    try:
        with opener.open(request, timeout=timeout) as response:
            found = opt_outs(response.headers, token, directives)
            if found:
                return Fetched(error=f"opted out by {', '.join(found)}", kind="opt_out", opt_outs=found)
            return Fetched(body=response.read())
    except urllib.error.HTTPError as exc:
        retry = retry_after_seconds(exc.headers.get("Retry-After")) if exc.code in (429, 503) and exc.headers else None
        exc.close()
        return Fetched(error=f"HTTP Error {exc.code}: {exc.reason}", kind=exception_kind(exc), retry_after=retry)
    except Exception as exc:  # noqa: BLE001  (every failure becomes the row's error)
        return Fetched(error=str(exc) or type(exc).__name__, kind=exception_kind(exc))


@dataclass
class Robots:
    """A host's robots.txt as foil read it: rules, or why the host must not be crawled now."""

    parser: urllib.robotparser.RobotFileParser | None = None  # None: no rules (allow all)
    error: str | None = None  # robots.txt unreachable: crawl nothing on the host (RFC 9309 2.3.1.4)
    kind: str | None = None

    def allows(self, url: str, token: str) -> bool:
        return self.parser is None or self.parser.can_fetch(token, url)

    def crawl_delay(self, token: str) -> float | None:
        delay = self.parser.crawl_delay(token) if self.parser is not None else None
        return float(delay) if delay is not None else None


def fetch_robots(opener: urllib.request.OpenerDirector, origin: str, agent: str, timeout: float) -> Robots:
    """Read `origin`/robots.txt (RFC 9309): 4xx means no rules; 5xx or no answer means the host
    is not crawled now (its rows fail with that error, transient); a refused address means no
    rules, as every image request to it is refused by the same guard anyway."""
    request = urllib.request.Request(f"{origin}/robots.txt", headers={"User-Agent": agent})
    try:
        with opener.open(request, timeout=timeout) as response:
            text = response.read()[:ROBOTS_MAX_BYTES].decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        exc.close()
        if 400 <= exc.code < 500:
            return Robots()
        return Robots(error=f"robots.txt unavailable: HTTP Error {exc.code}: {exc.reason}", kind=exception_kind(exc))
    except Exception as exc:  # noqa: BLE001
        kind = exception_kind(exc)
        if kind in ("blocked_address", "invalid_url"):
            return Robots()
        return Robots(error=f"robots.txt unavailable: {exc}", kind=kind)
    parser = urllib.robotparser.RobotFileParser()
    parser.parse(text.splitlines())
    return Robots(parser=parser)


def pixel_problem(img_stream: io.BytesIO, max_pixels: int) -> str | None:
    """Why an image is too big to decode, from its header alone, or None; rewinds the stream."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(img_stream) as img:  # reads the header only
                width, height = img.size
    except Image.DecompressionBombError as exc:  # PIL's own limit, above ours or not
        return str(exc)
    except Exception:  # not an image PIL knows: the resizer reports the decode error
        width = height = 0
    finally:
        img_stream.seek(0)
    if width * height > max_pixels:
        return f"{width}x{height} > {max_pixels} pixels"
    return None
