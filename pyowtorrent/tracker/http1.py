"""One HTTP/1.1 GET and its answer, sans I/O: what a tracker announce or scrape needs.

h11 keeps the protocol's state (the status line and headers, within
:data:`MAX_HEAD_BYTES` plus one read; a body framed by ``Content-Length``, chunks or the
server's close); this module adds what a tracker client must bound on top:
the body, before and after ``gzip``/``deflate``, and redirects.  The caller
owns the socket::

    request = GetRequest.parse(url, user_agent)     # or HttpFailure
    send(request.encode())
    answer = AnswerReader(url, max_body)
    while (response := answer.feed(receive())) is None:   # b"" at end of stream
        pass
    if response.location is not None:               # a redirect: GET response.location
        ...

Nothing here blocks, and every failure, whatever the server sent, is an
:class:`HttpFailure`.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

import h11

__all__ = ["MAX_HEAD_BYTES", "MAX_REDIRECTS", "AnswerReader", "GetRequest", "HttpFailure", "HttpResponse"]

# The most of an unfinished status line and headers held (h11's default): a head
# that has not ended once this much of it is buffered is refused.
MAX_HEAD_BYTES = 16 * 1024
# aiohttp's and libtorrent's limit alike.
MAX_REDIRECTS = 5
# Interim answers (1xx) skipped before the real one: more is a server spinning us.
MAX_INTERIM = 8
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# zlib's wbits: 32 + 15 reads either a gzip or a zlib header (servers say "deflate" for the latter).
_GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS


class HttpFailure(Exception):
    """The request could not be made, or its answer could not be read."""


@dataclass(frozen=True)
class GetRequest:
    """A GET of ``url`` (already percent-encoded: its path and query go on the wire as they are)."""

    url: str
    scheme: str
    host: str  # for getaddrinfo and TLS's server name, without brackets
    port: int
    target: str  # path and query, exactly as the URL has them
    headers: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, url: str, user_agent: str) -> GetRequest:
        try:
            parts = urlsplit(url)
            port = parts.port  # raises for a port out of range
        except ValueError as exc:
            raise HttpFailure(f"not a usable URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise HttpFailure(f"not an http:// or https:// URL: {url!r}")
        if not parts.hostname:
            raise HttpFailure(f"no host in {url!r}")
        if port == 0:
            raise HttpFailure(f"not a usable URL: port 0 in {url!r}")
        headers = [
            ("Host", parts.netloc.rpartition("@")[2]),
            ("User-Agent", user_agent),
            ("Accept-Encoding", "gzip"),
            ("Connection", "close"),
        ]
        if parts.username or parts.password:  # http://user:password@host/ (RFC 7617 basic)
            secret = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
            headers.append(("Authorization", "Basic " + base64.b64encode(secret).decode()))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default = 443 if scheme == "https" else 80
        return cls(url, scheme, parts.hostname, default if port is None else port, target, tuple(headers))

    def encode(self) -> bytes:
        conn = h11.Connection(h11.CLIENT)
        try:
            return b"".join(
                (conn.send(h11.Request(method="GET", target=self.target, headers=list(self.headers))) or b"",
                 conn.send(h11.EndOfMessage()) or b"")
            )
        except (h11.LocalProtocolError, UnicodeError) as exc:  # a space or a non-ASCII byte in the URL
            raise HttpFailure(f"not a usable URL: {self.url!r}: {exc}") from None


@dataclass(frozen=True)
class HttpResponse:
    status: int
    reason: str
    body: bytes  # decoded (gunzipped); empty for a redirect
    location: str | None = None  # for a redirect: the absolute URL to GET next


class AnswerReader:
    """Reads one response to a :class:`GetRequest` of ``url``, from bytes in any pieces.

    :meth:`feed` takes what arrived (``b""`` once the stream ended) and returns
    the response once complete.  A redirect is complete as soon as its head is
    read: its body is not wanted.  A body (as sent, and once decoded) longer
    than ``max_body`` is refused as soon as it grows past it.
    """

    def __init__(self, url: str, max_body: int) -> None:
        self.url = url
        self.max_body = max_body
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        # h11 reads a response only to a request it has seen sent.
        self._conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        self._conn.send(h11.EndOfMessage())
        self._head: h11.Response | None = None
        self._inflate: zlib._Decompress | None = None
        self._sent = 0  # body bytes as sent
        self._interim = 0
        self._body = bytearray()

    def feed(self, data: bytes) -> HttpResponse | None:
        try:
            self._conn.receive_data(data)
            return self._next()
        except h11.RemoteProtocolError as exc:
            raise HttpFailure(f"not a readable HTTP answer: {exc}") from None
        except zlib.error as exc:
            raise HttpFailure(f"not a readable compressed answer: {exc}") from None
        except (ValueError, OverflowError) as exc:  # h11 < 0.15 let int() of a 5000-digit length through
            raise HttpFailure(f"not a readable HTTP answer: {exc}") from None

    def _next(self) -> HttpResponse | None:
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.Response):
                self._head = event
                response = self._start(event)
                if response is not None:
                    return response
            elif isinstance(event, h11.Data):
                self._take(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return self._finish()
            elif isinstance(event, h11.InformationalResponse):  # 100 Continue and the like: skipped
                self._interim += 1
                if self._interim > MAX_INTERIM:
                    raise HttpFailure(f"more than {MAX_INTERIM} interim (1xx) answers")
            # PAUSED cannot come before EndOfMessage, which returns.

    def _start(self, head: h11.Response) -> HttpResponse | None:
        headers = dict((name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers)
        location = headers.get("location")
        if head.status_code in _REDIRECTS and location is not None:
            try:
                target = urljoin(self.url, location.strip())
            except ValueError as exc:
                raise HttpFailure(f"redirected to an unusable URL: {exc}") from None
            return HttpResponse(head.status_code, head.reason.decode("latin-1"), b"", target)
        coding = headers.get("content-encoding", "identity").strip().lower()
        if coding in ("gzip", "x-gzip", "deflate"):
            self._inflate = zlib.decompressobj(_GZIP_OR_ZLIB)
        elif coding != "identity":
            raise HttpFailure(f"an answer in Content-Encoding {coding!r}, which we did not ask for")
        return None

    def _take(self, data: bytes) -> None:
        self._sent += len(data)
        if self._sent > self.max_body:
            raise HttpFailure(f"answer larger than {self.max_body} bytes")
        if self._inflate is not None:
            room = self.max_body - len(self._body)
            data = self._inflate.decompress(data, room + 1)
            if self._inflate.unconsumed_tail:
                raise HttpFailure(f"answer larger than {self.max_body} bytes once decompressed")
        self._body += data
        if len(self._body) > self.max_body:
            raise HttpFailure(f"answer larger than {self.max_body} bytes once decompressed")

    def _finish(self) -> HttpResponse:
        assert self._head is not None
        if self._inflate is not None and self._sent and not self._inflate.eof:
            raise HttpFailure("a compressed answer cut short")
        return HttpResponse(self._head.status_code, self._head.reason.decode("latin-1"), bytes(self._body))
