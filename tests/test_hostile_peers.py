"""Hostile peers on loopback: whatever one connection does ends that connection, never the torrent."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pyowtorrent.engine.session import Session
from pyowtorrent.engine.events import TorrentState

from .engine_util import make_torrent, same_tree, until

JUNK_ANSWERS = {
    # What an HTTP server, a random byte stream, or a peer that speaks only MSE/PE answers.
    "http": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".ljust(68, b" "),
    "random": bytes(range(97, 97 + 68)),
    "wrong protocol string": b"\x13" + b"BitTorrent protocoX" + bytes(48),
    "short then close": b"\x13BitTorrent",
}


class JunkPeer:
    """A listener that answers every connection with ``answer`` and records when we hung up."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.hung_up = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.2", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.answer)
        try:
            await writer.drain()
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        finally:
            self.hung_up += 1
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def lo_session(**kw: Any) -> Session:
    kw.setdefault("reconnect_delay", 0.2)
    return Session(listen="127.0.0.1", **kw)


@pytest.mark.parametrize("answer", list(JUNK_ANSWERS))
def test_a_junk_handshake_from_a_dialled_peer_ends_that_connection_not_the_torrent(tmp_path: Path, answer: str) -> None:
    """A leecher and a seeder each dial an address that answers junk; both keep going,
    and the download from the real seeder completes byte-exact."""
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 600_000})

    async def main() -> None:
        junk = JunkPeer(JUNK_ANSWERS[answer])
        port = await junk.start()
        try:
            async with lo_session() as seed_s, lo_session() as leech_s:
                seeder = await seed_s.add_torrent(meta, seed_dir, peers=[("127.0.0.2", port)])
                await until(lambda: junk.hung_up >= 1, what="the seeder to drop the junk peer")
                assert seeder.state is TorrentState.SEEDING
                leecher = await leech_s.add_torrent(
                    meta, tmp_path / "leech", peers=[("127.0.0.2", port), ("127.0.0.1", seed_s.listen_port)]
                )
                await leecher.wait_done(timeout=30)
                await until(lambda: junk.hung_up >= 2, what="the leecher to drop the junk peer")
                assert leecher.state is TorrentState.SEEDING and leecher.error is None
                assert seeder.state is TorrentState.SEEDING and seeder.error is None
        finally:
            await junk.close()

    asyncio.run(main())
    assert same_tree(seed_dir / "ds", tmp_path / "leech" / "ds")
