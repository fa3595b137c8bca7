"""Hostile peers for the tests: real wire protocol, any network (TCP on loopback, or a simulator host).

An :class:`Attacker` handshakes properly with the sans-IO ``PeerConnection`` and
then does what a test tells it: floods, hogs a slot, never reads, rejects
everything.  Every loop is bounded, and every address is on loopback or in the
simulator.
"""

from __future__ import annotations

import asyncio
import os
from typing import Iterable

from pyowtorrent.engine.net import Address, Network, TcpNetwork
from pyowtorrent.metainfo.torrent_file import Metainfo
from pyowtorrent.wire import Handshake, PeerConnection, parse_handshake
from pyowtorrent.wire import events as ev
from pyowtorrent.wire.handshake import HANDSHAKE_LENGTH


class Attacker:
    def __init__(
        self,
        meta: Metainfo,
        network: Network | None = None,
        *,
        local_host: str | None = None,
        fast: bool = True,
        extension_protocol: bool = True,
    ) -> None:
        self.meta = meta
        self.network = network or TcpNetwork()
        self.local_host = local_host
        self.conn = PeerConnection(
            meta.info_hash,
            b"-XX0000-" + os.urandom(12),
            meta.num_pieces,
            meta.piece_length,
            meta.total_length,
            fast=fast,
            extension_protocol=extension_protocol,
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.remote: Handshake | None = None
        self.events: list[ev.Event] = []

    async def connect(self, address: Address) -> None:
        self.reader, self.writer = await self.network.connect(*address, local_host=self.local_host)
        self.writer.write(self.conn.handshake_bytes())
        data = await self.reader.readexactly(HANDSHAKE_LENGTH)
        self.remote = parse_handshake(data)
        self.events += self.conn.receive_data(data)

    def send(self, *events: ev.Message | ev.Pex | ev.MetadataMessage) -> None:
        assert self.writer is not None
        self.writer.write(b"".join(self.conn.send(e) for e in events))

    def send_raw(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    async def drain(self) -> bool:
        """Push what was written; False once the other side has hung up."""
        assert self.writer is not None
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return not self.writer.is_closing()

    async def read(self) -> bool:
        """Take what arrived into :attr:`events`; False at the end of the stream."""
        assert self.reader is not None
        try:
            data = await self.reader.read(1 << 16)
        except (ConnectionError, OSError):
            return False
        if not data:
            return False
        self.events += self.conn.receive_data(data)
        return True

    async def read_until_closed(self) -> None:
        while await self.read():
            pass

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def flood(self, messages: Iterable[bytes], *, batch: int = 1000) -> int:
        """Send raw messages until the other side hangs up or they run out; how many were sent."""
        sent = 0
        chunk: list[bytes] = []
        for m in messages:
            chunk.append(m)
            if len(chunk) == batch:
                self.send_raw(b"".join(chunk))
                sent += len(chunk)
                chunk.clear()
                if not await self.drain():
                    return sent
        if chunk:
            self.send_raw(b"".join(chunk))
            sent += len(chunk)
            await self.drain()
        return sent


def ignore_closed(task: asyncio.Task[object]) -> None:
    """A done-callback for attack tasks: their connection errors are the point, not a failure."""
    if not task.cancelled():
        task.exception()
