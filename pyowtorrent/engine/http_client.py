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
import ssl
from typing import Sequence

from ..tracker.http1 import MAX_REDIRECTS, AnswerReader, GetRequest, HttpFailure, HttpResponse
from .net import TcpNetwork

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
        :class:`HttpFailure`.
        """
        try:
            async with asyncio.timeout(timeout):
                for _ in range(MAX_REDIRECTS + 1):
                    response = await self._get_once(url, max_body)
                    if response.location is None:
                        return response
                    url = response.location
        except TimeoutError:
            raise HttpFailure(f"no answer within {timeout:g} s") from None
        raise HttpFailure(f"more than {MAX_REDIRECTS} redirects")

    async def _get_once(self, url: str, max_body: int) -> HttpResponse:
        request = GetRequest.parse(url, self.user_agent)
        head = request.encode()
        tls = self._tls_context() if request.scheme == "https" else None
        try:
            reader, writer = await self.network.connect(request.host, request.port, tls=tls)
        except (OSError, ssl.SSLError, UnicodeError) as exc:  # UnicodeError: a host name IDNA refuses
            raise HttpFailure(f"cannot connect to {request.host}:{request.port}: {exc}") from None
        try:
            writer.write(head)
            answer = AnswerReader(url, max_body)
            while True:
                response = answer.feed(await reader.read(_READ))
                if response is not None:
                    return response
        except (OSError, ssl.SSLError) as exc:
            raise HttpFailure(f"connection to {request.host}:{request.port} failed: {exc}") from None
        finally:
            # The answer is framed and read (or given up on): no goodbye owed, and a TLS
            # close_notify the tracker never answers would hold the socket for 30 s.
            writer.transport.abort()

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls
