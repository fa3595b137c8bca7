"""Metadata exchange (BEP 9 ``ut_metadata``) for one torrent: the seeding side.

Our extension handshake advertises ``ut_metadata`` and the real
``metadata_size`` (the length of the info dictionary's bytes), and a peer's
requests are answered by one sans-IO
:class:`~pyowtorrent.wire.metadata.MetadataServer` per torrent: the block, or
a reject for a piece out of range or a peer over its bounds.  The server
bounds the answers not yet written per peer; an answer counts as written once
the transport has handed all the bytes up to its end to the socket, which
the driver's byte counts tell (looked at when the peer asks again: it asks
again only after an answer arrived).

Private torrents (BEP 27) get none of it, as libtorrent does (2.x leaves its
ut_metadata plugin off for a torrent whose metadata says private):
``ut_metadata`` is not advertised, so a message under its id ends the
connection (an id we never advertised).

Data and rejects are what a fetching peer receives; every torrent here has
its metadata, so one that arrives was never asked for and is ignored, as
libtorrent does, and counted among the messages that carry nothing.
Fetching it (a magnet link) is :mod:`~pyowtorrent.engine.magnet`'s.
"""

from __future__ import annotations

from collections import deque

from ..metainfo.torrent_file import Metainfo
from ..wire import events as ev
from ..wire.metadata import METADATA_EXTENSION, MetadataServer
from .peer import Peer

__all__ = ["METADATA_ID", "MetadataService"]

# The id we ask peers to send ut_metadata under (libtorrent's choice too; ut_pex is 1).
METADATA_ID = 2


class MetadataService:
    def __init__(self, meta: Metainfo) -> None:
        self.server: MetadataServer | None = None if meta.private else MetadataServer(meta.info_bytes)
        # Per peer: the value of its bytes_written at the end of each answer not yet known to have left.
        self._pending: dict[Peer, deque[int]] = {}
        self.served = 0  # data answers sent, for the curious

    @property
    def metadata_size(self) -> int | None:
        """What goes into the ``metadata_size`` of our extension handshake."""
        return self.server.metadata_size if self.server is not None else None

    def extension_ids(self) -> dict[str, int]:
        """What goes into the ``m`` of our extension handshake."""
        return {METADATA_EXTENSION: METADATA_ID} if self.server is not None else {}

    def on_message(self, peer: Peer, message: ev.MetadataMessage) -> None:
        server = self.server
        if server is None or not isinstance(message, ev.MetadataRequest):
            peer.conduct.idle_message("ut_metadata")
            return
        if METADATA_EXTENSION not in peer.conn.remote_extensions:
            # It asks but takes no answers (never advertised, or disabled since): nothing to send.
            peer.conduct.idle_message("ut_metadata")
            return
        self._settle(peer)
        answer = server.answer(peer, message)
        peer.send(answer)
        if isinstance(answer, ev.MetadataData):
            self.served += 1
            self._pending.setdefault(peer, deque()).append(peer.bytes_written)
            self._settle(peer)
        else:
            peer.conduct.idle_message("rejected ut_metadata request")

    def _settle(self, peer: Peer) -> None:
        """Tell the server of the answers to ``peer`` that have left our send buffer."""
        pending = self._pending.get(peer)
        if not pending or self.server is None:
            return
        if peer.closed.is_set():
            left = peer.bytes_written  # nothing more will leave; forget() follows
        else:
            left = peer.bytes_written - peer.writer.transport.get_write_buffer_size()
        while pending and pending[0] <= left:
            pending.popleft()
            self.server.written(peer)

    def forget(self, peer: Peer) -> None:
        self._pending.pop(peer, None)
        if self.server is not None:
            self.server.forget(peer)
