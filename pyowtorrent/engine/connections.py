"""A torrent's peer connections: whom it knows, whom it dials, whom it bans.

The session does the socket work (:class:`~pyowtorrent.engine.services.Dialer`,
and accepting); a :class:`PeerSet` decides which known address to dial
next, within the torrent's and the session's connection limits, turns a
finished handshake into a :class:`~pyowtorrent.engine.peer.Peer`, and keeps
the bookkeeping when a peer goes.  Every dial runs under a supervisor that
ends only that attempt, whatever goes wrong in it.
"""

from __future__ import annotations

import logging
from typing import Callable

from ..errors import ProtocolError
from ..metainfo.torrent_file import Metainfo
from ..tracker.peers import holder_of_text
from ..wire.connection import PeerConnection
from .events import EventBus, PeerBanned, PeerConnected, PeerDisconnected
from .handshake import PeerLink
from .net import Address
from .peer import Peer, PeerHost
from .services import Supervisor, TorrentServices

log = logging.getLogger(__name__)

__all__ = ["MAX_KNOWN_PEERS", "PeerSet"]

# Bounds on what peers and trackers can make a torrent remember.
MAX_KNOWN_PEERS = 2000
# A peer younger than this is never evicted: it has not had time to be useful.
EVICTION_GRACE = 30.0
# Bans are by (IP, peer id), so an honest peer behind the same NAT as a liar
# keeps its connection; an address where this many peer ids were convicted is
# banned whole (a liar that reconnects under a new peer id).
CONVICTIONS_TO_BAN_ADDRESS = 2


class PeerSet:
    def __init__(
        self,
        meta: Metainfo,
        services: TorrentServices,
        host: PeerHost,
        greet: Callable[[Peer], None],
        events: EventBus,
        others: Callable[[], int] = lambda: 0,
    ) -> None:
        self.meta = meta
        self.services = services
        self.others = others  # the torrent's other connections (web seeds), under the same cap
        self.clock = services.clock
        self.host = host
        self.greet = greet
        self.events = events
        self.peers: dict[Address, Peer] = {}
        self.known: dict[Address, float] = {}  # address -> not before (engine clock)
        self.banned: set[str] = set()  # addresses banned whole
        self.banned_peers: set[tuple[str, bytes]] = set()  # (IP, peer id)
        self.pending: set[Address] = set()
        self.leaving: set[Address] = set()  # closed by us, its close still under way
        self.active = False  # dialling and accepting only while downloading or seeding
        # A task failing here is a bug of ours (the dialler turns network failures
        # into None, and Peer.run closes its connection whatever ends it): the
        # supervisors log it, and it ends that one dial or peer only.
        self._dials = Supervisor(f"{meta.name} dials")
        self._runs = Supervisor(f"{meta.name} peers")

    def add(self, host: str, port: int) -> None:
        """An address to connect to (from the user, a tracker, or PEX)."""
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port}")
        addr = (host, port)
        if len(self.known) >= MAX_KNOWN_PEERS and addr not in self.known:
            # Forget the address least likely to be useful: the one waiting longest to be retried.
            worst = max(self.known, key=lambda a: (a not in self.peers, self.known[a]))
            if worst in self.peers:
                return
            del self.known[worst]
        self.known.setdefault(addr, 0.0)
        self.connect_more()

    def connect_more(self) -> None:
        if not self.active:
            return
        now = self.clock.now()
        limit = self.services.settings.max_connections_per_torrent
        connected = self._listen_addresses()
        for addr, not_before in list(self.known.items()):
            if len(self.peers) + len(self.pending) + self.others() >= limit or not self.services.budget.can_connect():
                return
            if addr in connected or addr in self.pending or addr[0] in self.banned or not_before > now:
                continue
            if self.services.dialer.is_self(addr):
                del self.known[addr]  # our own listen address, found by dialling it once
                continue
            self.pending.add(addr)
            self._dials.spawn(self._dial(addr), f"dial {addr}")

    def _listen_addresses(self) -> set[Address]:
        """Where the connected peers accept connections: a peer that dialled us is known to the
        tracker by its listen port (its extension handshake's ``p``), not the port it came from."""
        out = set(self.peers)
        for p in self.peers.values():
            handshake = p.extension_handshake
            if not p.outgoing and handshake is not None and handshake.p:
                out.add((p.address[0], handshake.p))
        return out

    async def _dial(self, addr: Address) -> None:
        conn = self.new_connection()
        try:
            link = await self.services.dialer.dial(addr, conn)
        finally:
            # Also when a pause cancels the attempt: the address must stay dialable.
            self.pending.discard(addr)
        if link is None:
            self.known[addr] = self.clock.now() + self.services.settings.reconnect_delay
            return
        self._attach(link, conn)

    def accept(self, link: PeerLink) -> None:
        """An incoming connection whose handshake named this torrent."""
        ip = link.address[0]
        settings = self.services.settings
        if not self.active or ip in self.banned or (ip, link.handshake.peer_id) in self.banned_peers:
            link.writer.close()
            return
        host = holder_of_text(ip)  # an IPv6 host counts as its /64
        if sum(1 for a in self.peers if holder_of_text(a[0]) == host) >= settings.max_connections_per_ip:
            log.debug("%s: %s already holds %d connections", self.meta.name, ip, settings.max_connections_per_ip)
            self._turn_away(link)
            return
        if len(self.peers) - len(self.leaving) + self.others() >= settings.max_connections_per_torrent:
            victim = self._useless_peer()
            if victim is None:
                self._turn_away(link)
                return
            self.close(victim, "replaced by a new peer")  # it goes as the newcomer comes
        conn = self.new_connection()
        link.writer.write(conn.handshake_bytes())
        self._attach(link, conn)

    def _turn_away(self, link: PeerLink) -> None:
        """Refuse a peer for want of room: our handshake, then the close.  Closed before it, the
        connection looks to a dialler with encryption enabled (ours, libtorrent's) like a refusal of
        plaintext, and it dials again with an encrypted handshake (a key exchange on both sides, for
        nothing): in an 8-leecher swarm on one address, 40 such exchanges."""
        link.writer.write(self.new_connection().handshake_bytes())
        link.writer.close()

    def _useless_peer(self) -> Peer | None:
        """The peer to drop for a newcomer: neither side interested, connected longest, past its grace."""
        now = self.clock.now()
        useless = [
            p
            for p in self.peers.values()
            if not p.am_interested
            and not p.peer_interested
            and now - p.connected_at > EVICTION_GRACE
            and p.address not in self.leaving
        ]
        return min(useless, key=lambda p: p.connected_at, default=None)

    def new_connection(self) -> PeerConnection:
        m = self.meta
        # BEP 27: a private torrent's peers come from its trackers only, so no PEX either way;
        # nor ut_metadata, as libtorrent does (see engine/metadata.py).
        return PeerConnection(
            m.info_hash,
            self.services.settings.peer_id,
            m.num_pieces,
            m.piece_length,
            m.total_length,
            pex=not m.private,
            metadata=not m.private,
        )

    def _attach(self, link: PeerLink, conn: PeerConnection) -> None:
        addr = link.address
        if addr[0] in self.banned or (addr[0], link.handshake.peer_id) in self.banned_peers:
            link.writer.close()  # a convicted peer, dialled at an address it had not used
            return
        # The same peer twice (both sides dialled): same address, same peer id.  Only
        # with the address: peer ids are not authenticated, and one presented from
        # another address must not lock the real peer out.
        twin = any(p.peer_id == link.handshake.peer_id and p.address[0] == addr[0] for p in self.peers.values())
        if twin or addr in self.peers:
            log.debug("%s: already connected to %s", self.meta.name, addr)
            link.writer.close()
            if link.outgoing:
                self.known[addr] = self.clock.now() + self.services.settings.reconnect_delay  # not every tick
            return
        peer = Peer(self.host, self.clock, link.reader, link.writer, conn, addr, link.outgoing, self.meta.num_pieces)
        try:
            peer.start(link.data)
        except ProtocolError as exc:
            log.debug("%s: %s: %s", self.meta.name, addr, exc)
            link.writer.close()
            return
        self.peers[addr] = peer
        self._runs.spawn(peer.run(), f"peer {addr}")
        self.greet(peer)
        self.events.emit(PeerConnected(at=self.clock.now(), peer=addr))

    def forget(self, peer: Peer) -> bool:
        """Take a closed peer out; whether it was one of ours."""
        if self.peers.get(peer.address) is not peer:
            return False
        del self.peers[peer.address]
        self.leaving.discard(peer.address)
        if peer.outgoing:
            self.known[peer.address] = self.clock.now() + self.services.settings.reconnect_delay
        self.events.emit(PeerDisconnected(at=self.clock.now(), peer=peer.address, reason=peer.close_reason))
        return True

    def ban(self, peer: tuple[str, bytes], why: str) -> None:
        ip, peer_id = peer
        if ip in self.banned or peer in self.banned_peers:
            return
        self.banned_peers.add(peer)
        whole = sum(1 for other_ip, _ in self.banned_peers if other_ip == ip) >= CONVICTIONS_TO_BAN_ADDRESS
        if whole:
            self.banned.add(ip)
        log.warning("%s: banning %s%s: %s", self.meta.name, ip, "" if whole else f" ({peer_id!r})", why)
        for p in list(self.peers.values()):
            if p.address[0] == ip and (whole or p.peer_id == peer_id):
                self.close(p, f"banned: {why}")
        self.events.emit(PeerBanned(at=self.clock.now(), ip=ip, peer_id=None if whole else peer_id, reason=why))

    def stop(self, reason: str) -> None:
        """Cancel dials in progress and close every peer."""
        self.active = False
        self._dials.cancel()
        for p in list(self.peers.values()):
            self.close(p, reason)

    def close(self, peer: Peer, reason: str) -> None:
        self.leaving.add(peer.address)
        self._runs.spawn(peer.close(reason), f"close {peer.address}")

    async def wait_closed(self) -> None:
        await self._runs.wait()
