"""Connecting and handshakes: everything before a connection belongs to a torrent.

The session owns sockets: it dials and accepts through its
:class:`~pyowtorrent.engine.net.Network`, exchanges the BEP 3 handshake
with a deadline, refuses junk (an HTTP server, an MSE/PE stream, random
bytes) with a :class:`ProtocolError` that ends only that connection, and
hands a torrent a :class:`PeerLink` whose handshake is done.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..errors import ProtocolError
from ..wire import Handshake, parse_handshake
from ..wire.handshake import HANDSHAKE_LENGTH
from .clock import Clock
from .net import Address, Network

__all__ = ["CONNECT_TIMEOUT", "HANDSHAKE_TIMEOUT", "PeerLink", "open_stream", "read_handshake"]

CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0
# Failures that end one connection attempt, and nothing more.
CONNECTION_FAILURES = (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError)


@dataclass
class PeerLink:
    """A connection whose remote handshake has been read (and ours sent, when we dialled)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    address: Address
    handshake: Handshake
    data: bytes  # the remote's handshake as read, for the torrent's protocol object
    outgoing: bool


async def open_stream(
    network: Network, clock: Clock, address: Address, local_host: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with clock.timeout(CONNECT_TIMEOUT):
        return await network.connect(address[0], address[1], local_host=local_host)


async def read_handshake(reader: asyncio.StreamReader, clock: Clock) -> tuple[bytes, Handshake]:
    """The remote's 68-byte handshake; raises on junk (early: the protocol string comes first) or a timeout."""
    async with clock.timeout(HANDSHAKE_TIMEOUT):
        head = await reader.readexactly(20)
        parse_handshake(head)  # not "\x19BitTorrent protocol": refuse before waiting for the rest
        data = head + await reader.readexactly(HANDSHAKE_LENGTH - 20)
    hs = parse_handshake(data)
    assert hs is not None
    return data, hs
