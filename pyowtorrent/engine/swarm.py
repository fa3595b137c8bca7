"""A torrent's trading policy: what to ask each peer for, and whom to upload to.

:class:`Swarm` is the :class:`~pyowtorrent.engine.peer.PeerHost` of every
peer of one torrent, and the :class:`~pyowtorrent.engine.webseed.WebSeedHost`
of its web seeds (a block from either goes the same way).  It feeds what
peers say into the piece picker (rarest first, end-game), sends interest and
requests, routes received blocks to the
:class:`~pyowtorrent.engine.pieces.PieceAssembler`, serves uploads through
the rate limiter and the disk executor, and applies the choker's decisions.  The sans-IO strategies decide; this only wires them to
the peers.
Peer exchange (BEP 11) is :class:`~pyowtorrent.engine.pex.PeerExchange`'s, serving the
metadata (BEP 9) :class:`~pyowtorrent.engine.metadata.MetadataService`'s,
BEP 6's allowed-fast sets come from :mod:`pyowtorrent.strategy.allowed_fast`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Hashable
from typing import Callable, Sequence

from ..errors import StorageError
from ..metainfo.layout import BLOCK_SIZE
from ..metainfo.torrent_file import Metainfo
from ..storage.base import PieceStore
from ..strategy.allowed_fast import ALLOWED_FAST_SET_SIZE, allowed_fast_set
from ..strategy.choker import Choker, PeerStats
from ..strategy.picker import Block, PiecePicker
from ..wire import events as ev
from ..wire.bitfield import bitfield_bytes
from .connections import PeerSet
from .events import EventBus
from .metadata import MetadataService
from .meters import RateMeter
from .peer import OUR_REQQ, Peer
from .pex import PeerExchange
from .pieces import PeerIdentity, PieceAssembler
from .services import TorrentServices
from .webseed import WebSeeds

log = logging.getLogger(__name__)

__all__ = ["Swarm"]

# A peer's requests are topped up once a 1/REFILL_FRACTION of its queue has been answered.
REFILL_FRACTION = 4


class Swarm:
    def __init__(
        self,
        meta: Metainfo,
        services: TorrentServices,
        picker: PiecePicker,
        priorities: Sequence[int],
        storage: PieceStore,
        assembler: PieceAssembler,
        events: EventBus,
        is_done: Callable[[], bool],
        storage_failed: Callable[[str], None],
    ) -> None:
        self.meta = meta
        self.services = services
        self.clock = services.clock
        self.picker = picker
        self.priorities = priorities
        assembler.on_caught_up = self.refill_all
        # The wanted pieces, and every piece, as integers of one 0/1 byte per piece (_count_wanted).
        self._wanted = int.from_bytes(bytes(1 if p > 0 else 0 for p in priorities), "little")
        self._ones = int.from_bytes(b"\x01" * len(priorities), "little")
        self.storage = storage
        self.assembler = assembler
        self.is_done = is_done
        self.storage_failed = storage_failed
        # No upload slots (libtorrent's unchoke_slots_limit 0): we unchoke nobody and give only
        # allowed-fast pieces (BEP 6).  The choker keeps its rounds, so the torrent's tick is unchanged.
        self.choker = Choker(max(1, services.settings.upload_slots), seed=services.rng.getrandbits(64))
        self.connections = PeerSet(meta, services, self, self._greet, events, others=lambda: self.web_seeds.num_connected())
        self.pex = PeerExchange(
            not meta.private, self.clock, self.connections.add, services.dialer.is_self, services.listen_port
        )
        self.metadata = MetadataService(meta)
        self.uploaded_bytes = 0
        self.downloaded_bytes = 0
        self.download_meter = RateMeter(self.clock)
        self.upload_meter = RateMeter(self.clock)
        self.web_seeds = WebSeeds(meta, services, picker, self, events)

    @property
    def peers(self) -> dict[tuple[str, int], Peer]:
        return self.connections.peers

    # -- sources: peers and web seeds alike -----------------------------------------

    def connect_more(self) -> None:
        """Dial known peers and start or wake web seeds, within the limits, and send the PEX messages
        that are due (only while trading; the torrent calls this every tick)."""
        if self.connections.active:
            self.connections.connect_more()
            self.web_seeds.connect_more()
            self.pex.tick(list(self.peers.values()))

    def stop(self, reason: str) -> None:
        """Close every peer and end every web seed's requests."""
        self.connections.stop(reason)
        self.web_seeds.stop()

    async def wait_closed(self) -> None:
        await self.connections.wait_closed()
        await self.web_seeds.wait_closed()

    def ban(self, sender: PeerIdentity, reason: str) -> None:
        """Smart ban convicted ``sender``: a web seed is dropped, a peer banned."""
        if not self.web_seeds.convict(sender, reason):
            self.connections.ban(sender, reason)

    def num_connections(self) -> int:
        """Peer connections held and being dialled (web seeds count their own against the same cap)."""
        return len(self.connections.peers) + len(self.connections.pending)

    def take_block(self, source: Hashable, sender: PeerIdentity, block: Block, data: bytes | memoryview) -> bool:
        """A block from a web seed: into its piece's buffer, and the piece hashed once whole.
        False for a block not wanted (a late duplicate, or of a piece we have)."""
        return self.take_blocks(source, sender, [(block, data)]) > 0

    def take_blocks(self, source: Hashable, sender: PeerIdentity, blocks: list[tuple[Block, bytes | memoryview]]) -> int:
        """:meth:`take_block` for the blocks of one read, with what is looked up once per read
        rather than per 16 KiB; how many were wanted."""
        picker_take, add_block, assembler = self.picker.take_block, self.assembler.add_block, self.assembler
        taken_count = taken_bytes = 0
        for block, data in blocks:
            taken = picker_take(source, block)
            if taken is None:
                continue  # a late duplicate (end-game), or a piece we have
            taken_count += 1
            taken_bytes += len(data)
            add_block(block.index, block.begin, data, sender)
            complete, others = taken
            for other in others:
                if isinstance(other, Peer):
                    other.cancel(block)
            if complete:
                assembler.finish(block.index)
        if taken_bytes:
            self.downloaded_bytes += taken_bytes
            self.download_meter.add(taken_bytes)
        return taken_count

    def _greet(self, peer: Peer) -> None:
        """Our side of the opening: what we have, then (BEP 10) who we are."""
        remote = peer.conn.remote
        assert remote is not None
        have = self.picker.num_have()
        if remote.fast and have == self.meta.num_pieces:
            peer.send(ev.HaveAll())
        elif remote.fast and have == 0:
            peer.send(ev.HaveNone())
        elif have:
            peer.send(ev.Bitfield(bitfield_bytes(self.picker.have_flags)))
        if remote.extension_protocol:
            settings = self.services.settings
            port = self.services.listen_port() or None
            peer.send(
                ev.ExtensionHandshake(
                    m={**self.pex.extension_ids(), **self.metadata.extension_ids()},
                    v=settings.client_name,
                    reqq=OUR_REQQ,
                    p=port,
                    yourip=_packed(peer.address[0]),
                    metadata_size=self.metadata.metadata_size,
                )
            )

    # -- PeerHost: what peers report -------------------------------------------

    def have_piece(self, index: int) -> bool:
        return self.picker.has(index)

    def on_peer_pieces(self, peer: Peer, previous: bytearray | None = None) -> None:
        # A later bitfield replaces what the peer said before: take that back first.
        if peer.is_seed:
            peer.is_seed = False
            self.picker.peer_lost(None, is_seed=True)
        elif previous is not None:
            self.picker.peer_lost(previous)
        if peer.num_have == self.meta.num_pieces:
            peer.is_seed = True
            self.picker.peer_have_all(peer)
        elif peer.num_have:
            self.picker.peer_bitfield(peer.have, peer)
        # One 0/1 byte per piece, as integers: the three-way AND and the count run in C.
        have = int.from_bytes(self.picker.have_flags, "little")
        peer.wanted = (int.from_bytes(peer.have, "little") & self._wanted & (self._ones ^ have)).bit_count()
        self.update_interest(peer)

    def on_peer_have(self, peer: Peer, index: int) -> None:
        if peer.num_have == self.meta.num_pieces and not peer.is_seed:
            # It just became a seed: count it as one, not piece by piece.
            peer.have[index] = 0
            self.picker.peer_lost(peer.have, False)
            peer.have[index] = 1
            peer.is_seed = True
            self.picker.peer_have_all(peer)
        else:
            self.picker.peer_have(index, peer)
        if not self.picker.has(index) and self.priorities[index] > 0:
            peer.wanted += 1
            if not peer.am_interested:
                peer.send_interest(True)

    def on_peer_interest(self, peer: Peer) -> None:
        if peer.peer_interested and peer.fast and peer.uploads.grants is None and not peer.is_seed:
            # BEP 6: a starting peer may have these while choked.  Sent when it first says it is
            # interested, as libtorrent does, so that pieces it already has are left out.
            num_pieces = self.meta.num_pieces
            peer.uploads.grant(allowed_fast_set(peer.address[0], self.meta.info_hash, num_pieces, ALLOWED_FAST_SET_SIZE))
        unchoked = sum(1 for p in self.peers.values() if not p.am_choking)
        if peer.peer_interested and peer.am_choking and unchoked < self.services.settings.upload_slots:
            self.rechoke()  # a free slot: no need to wait for the next round

    def on_blocks(self, peer: Peer, blocks: list[tuple[Block, bytes | memoryview]]) -> None:
        # After the read's other events: nothing else a read brings depends on its blocks taken first.
        self.take_blocks(peer, (peer.address[0], peer.peer_id), blocks)

    def on_request_failed(self, peer: Peer, block: Block) -> None:
        self.picker.on_request_failed(peer, block)

    def on_peer_pex(self, peer: Peer, message: ev.Pex) -> None:
        self.pex.on_message(peer, message)

    def on_peer_metadata(self, peer: Peer, message: ev.MetadataMessage) -> None:
        self.metadata.on_message(peer, message)

    def on_uploaded(self, peer: Peer, nbytes: int) -> None:
        self.uploaded_bytes += nbytes
        self.upload_meter.add(nbytes)

    async def read_block(self, index: int, begin: int, length: int) -> bytes | bytearray:
        await self.services.upload_limiter.take(length)
        try:
            return await self.services.disk.run(self.storage.read_block, index, begin, length)
        except StorageError as exc:
            # Our own file is gone or short (truncated under us): every peer would
            # be refused alike, so the torrent says so rather than serve nothing.
            self.storage_failed(f"cannot read piece {index}: {exc}")
            raise

    def peer_closed(self, peer: Peer) -> None:
        if not self.connections.forget(peer):
            return
        self.pex.forget(peer)
        self.metadata.forget(peer)
        self.picker.on_peer_gone(peer)
        if peer.is_seed:
            self.picker.peer_lost(None, is_seed=True)
        elif peer.num_have:
            self.picker.peer_lost(peer.have)
        if not peer.am_choking:
            self.rechoke()
        if peer.outstanding:
            self.refill_all()  # its blocks are free again: others may take them now

    # -- requests and interest ---------------------------------------------------

    def wants_from(self, peer: Peer) -> bool:
        return peer.wanted > 0 and not self.picker.is_finished()

    def update_interest(self, peer: Peer) -> None:
        wanted = self.wants_from(peer)
        peer.send_interest(wanted)
        if wanted:
            self.fill_requests(peer)

    def fill_requests(self, peer: Peer) -> None:
        if peer.closed.is_set() or not peer.am_interested or peer.conduct.backoff_until or self.assembler.backlogged:
            return
        want = peer.queue_target - len(peer.outstanding)
        if want <= 0 or (peer.outstanding and want < peer.queue_target // REFILL_FRACTION):
            # Requests go out in batches, a quarter of the queue at a time: a write per block
            # answered costs a packet each way (on loopback, most of a fast leecher's time).
            return
        if peer.peer_choking:
            self._fill_allowed_fast(peer, want)
            return
        blocks = self.picker.pick(peer, peer.have, want)
        if blocks:
            peer.request(blocks)
        elif not peer.outstanding:
            peer.send_interest(self.wants_from(peer))  # it may have nothing left that we want

    def _fill_allowed_fast(self, peer: Peer, want: int) -> None:
        """BEP 6: ask a peer that chokes us for the allowed-fast pieces it offered, has, and we want.

        Allowed fast is for starting (BEP 6's reference implementation refuses a peer holding more
        pieces than the set): we ask only while we hold fewer than that, while no peer we want
        from unchokes us, and one piece at a time from all the peers that choke us.  Taking every
        set whole, as libtorrent does, had each leecher of a flash crowd split its uploaders'
        bandwidth many ways for pieces it could soon have had by trading: in the simulator's
        50-leecher swarm the last leecher finished at 2.04 times the bandwidth bound instead of
        1.51 without allowed fast, the seeder sending 3.7 copies instead of 2.6; asking this way,
        1.66 times and 2.8 copies.  A peer that only ever chokes us still gives us its whole set.
        """
        if not peer.fast or not peer.offers or peer.outstanding or self.picker.num_have() >= ALLOWED_FAST_SET_SIZE:
            return
        if any((not p.peer_choking and p.am_interested) or (p.peer_choking and p.outstanding) for p in self.peers.values()):
            return
        prio, picker = self.priorities, self.picker
        wanted = {i for i in peer.offers.pieces if peer.have[i] and prio[i] > 0 and not picker.has(i)}
        if wanted:
            piece_blocks = -(-self.meta.piece_length // BLOCK_SIZE)
            blocks = picker.pick(peer, wanted.__contains__, min(want, piece_blocks))
            if blocks:
                peer.request(blocks)

    def refill_all(self) -> None:
        for p in list(self.peers.values()):
            self.fill_requests(p)

    def refill_idle(self) -> None:
        """Ask again the peers we want from that have nothing of ours outstanding.

        Blocks come back to the picker when another peer goes, rejects or times
        out; a peer that found nothing to take before may find them now, though
        it says nothing that would make us ask (a partial seed sends no haves).
        """
        for p in list(self.peers.values()):
            if not p.outstanding:
                self.fill_requests(p)

    def announce_piece(self, index: int) -> None:
        """We have piece ``index`` now (after the picker was told): peers hear of it, and those
        that have it offer us one piece fewer."""
        wanted = self.priorities[index] > 0
        for p in list(self.peers.values()):
            p.send_have(index)
            if wanted and p.have[index]:
                p.wanted -= 1

    def reconsider_interest(self) -> None:
        for p in list(self.peers.values()):
            self.update_interest(p)

    # -- choking --------------------------------------------------------------------

    def rechoke(self) -> None:
        now = self.clock.now()
        stats = [
            PeerStats(
                key=p.address,
                # A peer that reads nothing of what we send is no candidate for a slot.
                interested=p.peer_interested and not p.conduct.upload_stalled,
                download_rate=p.downloaded.rate(now),
                upload_rate=p.uploaded.rate(now),
                snubbed=p.snubbed,
                is_seed=p.is_seed,
                connected_at=p.connected_at,
            )
            for p in self.peers.values()
        ]
        decision = self.choker.rechoke(now, stats, self.is_done())
        unchoke = decision.unchoke if self.services.settings.upload_slots > 0 else frozenset()
        for p in list(self.peers.values()):
            p.set_choking(p.address not in unchoke)


def _packed(ip: str) -> bytes | None:
    """BEP 10 ``yourip``: the peer's address as we see it (IPv4 for a dual-stack socket's mapped one)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.packed
