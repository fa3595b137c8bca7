"""The engine's one way onto the network: every peer dial and listen goes through a :class:`Network`.

The default is asyncio's TCP (:class:`TcpNetwork`); the swarm simulator
supplies in-memory links with latency and bandwidth.  A connection is an
``asyncio.StreamReader`` / ``asyncio.StreamWriter`` pair either way, so the
peer driver cannot tell them apart.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Protocol, Sequence

__all__ = ["Address", "ConnectionHandler", "Listener", "Network", "TcpNetwork"]

Address = tuple[str, int]
ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Listener(Protocol):
    def addresses(self) -> Sequence[Address]: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class Network(Protocol):
    async def connect(
        self, host: str, port: int, *, local_host: str | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a stream to ``host:port`` (from ``local_host`` when given); raises ``OSError``."""
        ...

    async def listen(self, handler: ConnectionHandler, host: str, port: int) -> Listener:
        """Accept streams on ``host:port`` (port 0: any free one); raises ``OSError``."""
        ...


class _TcpListener:
    def __init__(self, server: asyncio.Server) -> None:
        self._server = server

    def addresses(self) -> list[Address]:
        out: list[Address] = []
        for sock in self._server.sockets:
            host, port = sock.getsockname()[:2]
            out.append((str(host), int(port)))
        return out

    def close(self) -> None:
        self._server.close()

    async def wait_closed(self) -> None:
        await self._server.wait_closed()


class TcpNetwork:
    """asyncio's TCP streams."""

    async def connect(
        self, host: str, port: int, *, local_host: str | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        local = (local_host, 0) if local_host else None
        return await asyncio.open_connection(host, port, local_addr=local)

    async def listen(self, handler: ConnectionHandler, host: str, port: int) -> Listener:
        server = await asyncio.start_server(handler, host=host, port=port, reuse_address=True)
        return _TcpListener(server)
