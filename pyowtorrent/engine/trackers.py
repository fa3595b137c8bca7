"""Talking to trackers: HTTP(S) through :mod:`.http_client`, UDP (BEP 15) over an asyncio datagram socket.

Both clients take an :class:`AnnounceRequest` and give an
:class:`AnnounceResponse` or raise :class:`~pyowtorrent.errors.TrackerError`
— for a refusal, an unreadable answer, a timeout or a network failure alike.
The message formats are the sans-IO codecs' business.

Announces leave from the address we listen on when it is a specific one
(``bind``, see :func:`~pyowtorrent.engine.net.source_addresses`): UDP
announces bind their datagram socket to it, and HTTP announces go through
an :class:`~.http_client.HttpClient`, which binds each socket to the source
address of its family.  A tracker records the address an announce comes
from; from any other, peers would be sent where we do not listen.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from typing import Any, Protocol, Sequence
from urllib.parse import urlsplit

from ..errors import TrackerError
from ..tracker.http_codec import (
    MAX_RESPONSE_BYTES,
    AnnounceRequest,
    AnnounceResponse,
    ScrapeResult,
    parse_announce_response,
    parse_scrape_response,
    scrape_request_url,
    scrape_url,
    announce_url,
)
from ..tracker.udp_codec import (
    ACTION_ANNOUNCE,
    ACTION_CONNECT,
    ACTION_SCRAPE,
    CONNECTION_ID_LIFETIME,
    ConnectResponse,
    ScrapeResponse,
    StrayPacket,
    decode_response,
    encode_announce,
    encode_connect,
    encode_scrape,
    retransmit_timeout,
)

from .clock import Clock, LoopClock
from .http_client import HttpClient, HttpFailure
from .net import source_addresses, source_for

log = logging.getLogger(__name__)

__all__ = ["HttpTracker", "TrackerClient", "UdpTracker", "make_client"]


class TrackerClient(Protocol):
    url: str

    async def announce(self, req: AnnounceRequest) -> AnnounceResponse: ...

    async def scrape(self, info_hash: bytes) -> ScrapeResult | None: ...


class HttpTracker:
    """BEP 3 over HTTP(S): redirects followed, gzip accepted, the body read up to a bound."""

    def __init__(self, url: str, http: HttpClient, *, timeout: float = 30.0) -> None:
        self.url = url
        self._http = http  # shared by the session's trackers
        self._timeout = timeout

    async def _get(self, url: str) -> bytes:
        # The URL is percent-encoded byte by byte already (the codec's job) and
        # goes on the wire as it is: opentracker refuses a raw '$', and
        # trackers differ on '!', ',', ':'...
        try:
            resp = await self._http.get(url, timeout=self._timeout, max_body=MAX_RESPONSE_BYTES)
        except HttpFailure as exc:
            raise TrackerError(f"{self.url}: {exc}") from None
        if resp.status != 200:
            raise TrackerError(f"{self.url}: HTTP {resp.status} {resp.reason}".rstrip())
        return resp.body

    async def announce(self, req: AnnounceRequest) -> AnnounceResponse:
        return parse_announce_response(await self._get(announce_url(self.url, req)))

    async def scrape(self, info_hash: bytes) -> ScrapeResult | None:
        base = scrape_url(self.url)
        if base is None:
            return None  # BEP 48: no 'announce' in the path, no scrape
        return parse_scrape_response(await self._get(scrape_request_url(base, [info_hash])), info_hash)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception] = asyncio.Queue(maxsize=64)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.queue.full():  # a flood of stray packets is dropped, not buffered
            self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        if not self.queue.full():
            self.queue.put_nowait(exc)  # e.g. ICMP port unreachable: nobody is there


class UdpTracker:
    """BEP 15: connect, then announce or scrape, retransmitting after 15·2ⁿ seconds.

    ``retransmit_base`` is the 15 s of the spec (smaller in tests); after
    ``max_tries`` unanswered tries the tracker counts as failed, so that the
    next one of its tier gets its turn within minutes rather than hours.
    ``bind``: the session's listen addresses; the datagram socket is bound
    to the specific one of the tracker's address family, if any.
    """

    def __init__(
        self,
        url: str,
        *,
        retransmit_base: float = 15.0,
        max_tries: int = 3,
        clock: Clock | None = None,
        bind: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.sources = source_addresses(bind)  # the address announces leave from, per family
        self.clock = clock or LoopClock()
        try:
            parts = urlsplit(url)
            port = parts.port  # raises for a port out of range
        except ValueError as exc:
            raise TrackerError(f"{url}: not a usable tracker URL: {exc}") from None
        if parts.scheme != "udp" or not parts.hostname or not port:
            raise TrackerError(f"{url}: not a udp://HOST:PORT tracker URL")
        self.host, self.port = parts.hostname, port
        self.retransmit_base = retransmit_base
        self.max_tries = max_tries
        self._connection: tuple[int, float] | None = None  # id, when received

    async def announce(self, req: AnnounceRequest) -> AnnounceResponse:
        resp = await self._request(ACTION_ANNOUNCE, lambda cid, tid: encode_announce(cid, tid, req))
        assert isinstance(resp, AnnounceResponse)
        return resp

    async def scrape(self, info_hash: bytes) -> ScrapeResult | None:
        resp = await self._request(ACTION_SCRAPE, lambda cid, tid: encode_scrape(cid, tid, [info_hash]), 1)
        assert isinstance(resp, ScrapeResponse)
        return resp.results[0]

    async def _request(self, action: int, build: Any, scrape_count: int | None = None) -> Any:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise TrackerError(f"{self.url}: cannot resolve {self.host}: {exc}") from None
        family, _, _, _, addr = infos[0]
        ipv6 = family == socket.AF_INET6
        source = source_for(self.sources, family)
        try:
            transport, proto = await loop.create_datagram_endpoint(
                _Datagrams,
                local_addr=(source, 0) if source is not None else None,
                remote_addr=(str(addr[0]), int(addr[1])),
                family=family,
            )
        except OSError as exc:
            raise TrackerError(f"{self.url}: {exc}") from None
        try:
            for n in range(self.max_tries):
                deadline = self.clock.now() + retransmit_timeout(n, self.retransmit_base)
                try:
                    cid = await self._connection_id(transport, proto, deadline)
                    tid = secrets.randbits(32)
                    transport.sendto(build(cid, tid))
                    return await self._receive(proto, tid, action, deadline, ipv6, scrape_count)
                except TimeoutError:
                    log.debug("%s: no answer to try %d", self.url, n + 1)
            raise TrackerError(f"{self.url}: no answer after {self.max_tries} tries")
        finally:
            transport.close()

    async def _connection_id(self, transport: Any, proto: _Datagrams, deadline: float) -> int:
        now = self.clock.now()
        if self._connection is not None and now - self._connection[1] < CONNECTION_ID_LIFETIME:
            return self._connection[0]
        tid = secrets.randbits(32)
        transport.sendto(encode_connect(tid))
        resp = await self._receive(proto, tid, ACTION_CONNECT, deadline, False, None)
        assert isinstance(resp, ConnectResponse)
        self._connection = (resp.connection_id, now)
        return resp.connection_id

    async def _receive(
        self, proto: _Datagrams, tid: int, action: int, deadline: float, ipv6: bool, scrape_count: int | None
    ) -> Any:
        while True:
            async with self.clock.timeout(max(0.0, deadline - self.clock.now())):
                packet = await proto.queue.get()
            if isinstance(packet, Exception):
                raise TrackerError(f"{self.url}: {packet}")
            try:
                return decode_response(packet, tid, action, ipv6=ipv6, scrape_count=scrape_count)
            except StrayPacket:
                continue  # an answer to an earlier try, or noise: keep waiting for ours


def make_client(
    url: str,
    http: HttpClient,
    *,
    clock: Clock | None = None,
    udp_retransmit_base: float = 15.0,
    http_timeout: float = 30.0,
    bind: Sequence[str] = (),
) -> TrackerClient:
    """A client for ``url``; ``http``: the HTTP client the session's trackers share.

    ``bind`` binds UDP announces (the session's listen addresses); HTTP ones
    leave from wherever the shared client binds them.
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        return HttpTracker(url, http, timeout=http_timeout)
    if scheme == "udp":
        return UdpTracker(url, retransmit_base=udp_retransmit_base, clock=clock, bind=bind)
    raise TrackerError(f"{url}: unsupported tracker scheme {scheme!r}")
