"""Guarded fetching for the crawler: which addresses may be contacted, and how much may be read.

img2dataset fetches with `urllib.request.urlopen`, which follows any URL scheme, any address and
reads whole bodies. foil puts a guarded opener in front of it for the duration of a shard:

- Only http and https. Host names are resolved and every address is checked *before* a socket is
  opened; the connection then goes to the checked address, so DNS cannot change the answer in
  between. Loopback, private, link-local, multicast, reserved and unspecified addresses are
  refused (`foil:blocked_address`) unless `allow_private` is set (local testing).
  Redirects go through the same opener, so they are checked too.
- A declared Content-Length over `max_bytes` is refused before the body is read, and a body that
  grows past it is cut off (`foil:too_large`). The whole body must arrive within `deadline_s`
  (`foil:too_slow`): a server trickling bytes cannot hold a thread forever.
- `PixelGuard` reads an image's header (no decoding) and refuses more than `max_pixels` pixels
  (`foil:too_many_pixels`) before img2dataset's resizer decodes it: decompression bombs stay small.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import ipaddress
import socket
import time
import urllib.request
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from PIL import Image

ALLOWED_SCHEMES = ("http", "https")


class FetchRefused(OSError):
    """Raised inside urllib; img2dataset records its message as the row's error."""


@dataclass(frozen=True)
class FetchPolicy:
    allow_private: bool = False
    max_bytes: int = 16 << 20
    deadline_s: float = 30.0


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
        raise FetchRefused(f"cannot resolve {host}: {exc}") from None
    last: OSError | None = None
    for family, socktype, proto, _, sockaddr in infos:
        problem = address_problem(sockaddr[0])
        if problem and not policy.allow_private:
            raise FetchRefused(f"foil:blocked_address {host} resolves to {problem} address {sockaddr[0]}")
        sock = socket.socket(family, socktype, proto)
        try:
            if timeout is not None:
                sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or FetchRefused(f"no address for {host}")


class CappedResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, policy: FetchPolicy, **kwargs: Any):
        super().__init__(sock, *args, **kwargs)
        self.policy = policy
        self.started = time.monotonic()

    def begin(self) -> None:
        super().begin()
        self.declared_length = self.length
        if self.length is not None and self.length > self.policy.max_bytes:
            raise FetchRefused(f"foil:too_large Content-Length {self.length} > {self.policy.max_bytes} bytes")

    def read(self, amt: int | None = None) -> bytes:
        if amt is not None:
            return super().read(amt)
        chunks, total = [], 0
        while True:
            if time.monotonic() - self.started > self.policy.deadline_s:
                raise FetchRefused(f"foil:too_slow body not complete after {self.policy.deadline_s:g} s")
            chunk = super().read(64 << 10)
            if not chunk:
                body = b"".join(chunks)
                # chunked reads end quietly when the server closes early; a short body is an error
                if self.declared_length is not None and total < self.declared_length:
                    raise http.client.IncompleteRead(body, self.declared_length - total)
                return body
            total += len(chunk)
            if total > self.policy.max_bytes:
                raise FetchRefused(f"foil:too_large body over {self.policy.max_bytes} bytes")
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
        raise FetchRefused(f"foil:invalid_url scheme {req.type!r} is not http or https")


def guarded_opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
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


@contextlib.contextmanager
def installed(opener: urllib.request.OpenerDirector) -> Iterator[None]:
    """Make `urlopen` (which img2dataset calls) use `opener` for the duration of the block."""
    previous = urllib.request._opener  # the module keeps its default opener here
    urllib.request.install_opener(opener)
    try:
        yield
    finally:
        urllib.request.install_opener(previous)


class PixelGuard:
    """Wraps img2dataset's resizer: refuse images whose header declares too many pixels."""

    def __init__(self, resizer: Callable[..., tuple], max_pixels: int):
        self.resizer = resizer
        self.max_pixels = max_pixels

    def __call__(self, img_stream: io.BytesIO, blurring_bbox_list: Any = None) -> tuple:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(img_stream) as img:  # reads the header only
                    width, height = img.size
        except Image.DecompressionBombError as exc:  # PIL's own limit, above ours or not
            return None, None, None, None, None, f"foil:too_many_pixels {exc}"
        except Exception:  # not an image PIL knows: the resizer reports the decode error
            width = height = 0
        if width * height > self.max_pixels:
            return None, None, None, None, None, f"foil:too_many_pixels {width}x{height} > {self.max_pixels}"
        img_stream.seek(0)
        return self.resizer(img_stream, blurring_bbox_list)
