"""The GET our HTTP(S) trackers need: one request per connection, over :class:`~.net.TcpNetwork`.

The protocol is :mod:`pyowtorrent.tracker.http1`'s (h11 underneath); this
module only moves its bytes, follows its redirects and keeps the clock.  A
tracker is asked once every few minutes, so there is no connection pool:
each GET has its own connection, closed once the answer is read
(``Connection: close``).

Why not aiohttp, which the service layer serves with: importing its client
costs about 0.2 CPU s, most of it two TLS contexts built at import, paid on
the event loop before a leecher's first announce — more than the rest of a
leecher's start-up.  Here a TLS context is made only when an ``https://``
tracker is asked, once per client.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Sequence

from ..tracker.http1 import MAX_REDIRECTS, AnswerReader, GetRequest, HttpFailure, HttpResponse
from .net import TcpNetwork, is_local_address

__all__ = ["HttpClient", "HttpFailure", "HttpResponse"]

_READ = 64 * 1024


class HttpClient:
    """GETs whose connections leave from ``bind``'s address of their family (the listen addresses).

    ``tls``: the context ``https://`` is checked with; by default the
    system's trusted certificates (``ssl.create_default_context()``).
    """

    def __init__(self, user_agent: str, bind: Sequence[str] = (), *, tls: ssl.SSLContext | None = None) -> None:
        self.user_agent = user_agent
        self.network = TcpNetwork(bind)
        self._tls = tls

    async def get(self, url: str, *, timeout: float, max_body: int) -> HttpResponse:
        """The answer to GET ``url``, redirects followed, within ``timeout`` seconds in all.

        The status may be anything; a body (sent or decoded) over ``max_body``
        bytes, an unreadable answer, a refused connection or the timeout is an
        :class:`HttpFailure`.  A server on a public address may not redirect us
        to a local one (libtorrent's SSRF mitigation): a tracker named in a
        torrent must not be able to make us probe our own network.
        """
        public = False
        try:
            async with asyncio.timeout(timeout):
                for hop in range(MAX_REDIRECTS + 1):
                    response, local = await self._get_once(url, max_body, refuse_local=public)
                    public = public or (hop == 0 and not local)
                    if response.location is None:
                        return response
                    url = response.location
        except TimeoutError:
            raise HttpFailure(f"no answer within {timeout:g} s") from None
        raise HttpFailure(f"more than {MAX_REDIRECTS} redirects")

    async def _get_once(self, url: str, max_body: int, *, refuse_local: bool) -> tuple[HttpResponse, bool]:
        """The answer to one GET, and whether the server was on a local address."""
        request = GetRequest.parse(url, self.user_agent)
        head = request.encode()
        tls = self._tls_context() if request.scheme == "https" else None
        if refuse_local and await self._resolves_local(request.host, request.port):
            raise HttpFailure(f"redirected from a public address to a local one ({request.host}): refused")
        try:
            reader, writer = await self.network.connect(request.host, request.port, tls=tls)
        except (OSError, ssl.SSLError, UnicodeError) as exc:  # UnicodeError: a host name IDNA refuses
            raise HttpFailure(f"cannot connect to {request.host}:{request.port}: {exc}") from None
        try:
            peer = writer.get_extra_info("peername")
            local = peer is not None and is_local_address(str(peer[0]))  # the address we reached, not the name
            if local and refuse_local:  # the name resolved otherwise a moment ago (DNS rebinding)
                raise HttpFailure(f"redirected from a public address to a local one ({request.host}): refused")
            writer.write(head)
            answer = AnswerReader(url, max_body)
            while True:
                response = answer.feed(await reader.read(_READ))
                if response is not None:
                    return response, local
        except (OSError, ssl.SSLError) as exc:
            raise HttpFailure(f"connection to {request.host}:{request.port} failed: {exc}") from None
        finally:
            # The answer is framed and read (or given up on): no goodbye owed, and a TLS
            # close_notify the tracker never answers would hold the socket for 30 s.
            writer.transport.abort()

    @staticmethod
    async def _resolves_local(host: str, port: int) -> bool:
        """Whether ``host`` is, or resolves to, a local address: checked before dialling, since
        a connection attempt is itself a probe of the local network."""
        if is_local_address(host):
            return True
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):  # UnicodeError: a name IDNA refuses ("a..b")
            return False  # the dial will fail and say so
        return any(is_local_address(str(info[4][0])) for info in infos)

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls
