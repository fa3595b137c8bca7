"""BEP 6 allowed-fast: the canonical set, granting it, honouring it both ways.

* The generator against BEP 6's published vectors and its stated properties.
* Our seeder that unchokes nobody (``upload_slots=0``) still serves a peer its
  allowed-fast pieces, over real sockets, and a request for any other piece
  while choked is still rejected (the wire's rule in fast mode).
* In the simulator, a leecher of a seeder that never unchokes it gets exactly
  the allowed-fast set the seeder computed for its address, and nothing else;
  a leecher that another seeder unchokes takes at most one allowed-fast piece
  (allowed fast is for starting: see ``Swarm._fill_allowed_fast``).
* Against libtorrent: a libtorrent seeder that unchokes nobody
  (``unchoke_slots_limit`` 0; its loopback peer class made to count against
  the slots, which by default it does not) gives our leecher the pieces of
  its allowed-fast set; a libtorrent leecher gets our allowed-fast pieces
  from our seeder that unchokes nobody.

Waits are on events (ours) or bounded polls (libtorrent's, which has no
callback); nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from pathlib import Path
from typing import Any, Iterator

import libtorrent as lt  # test-only reference implementation
from hypothesis import given, settings
from hypothesis import strategies as st

from pyowtorrent.engine.events import PieceVerified
from pyowtorrent.engine.session import Session
from pyowtorrent.metainfo.layout import BLOCK_SIZE
from pyowtorrent.metainfo.torrent_file import Metainfo
from pyowtorrent.sim import make_payload, metainfo_for_bytes, run_virtual
from pyowtorrent.sim.swarm import PeerSpec, SwarmSim
from pyowtorrent.strategy.allowed_fast import (
    ALLOWED_FAST_SET_SIZE,
    CHOKED_REQUESTS_PER_BLOCK,
    MAX_OFFERED,
    FastGrants,
    FastOffers,
    allowed_fast_set,
    masked_address,
)
from pyowtorrent.wire import events as ev

from .engine_util import make_torrent
from .hostile import Attacker
from .lt_util import LT_SETTINGS

DEADLINE = 30.0  # only turns a hang into a failure
AA = b"\xaa" * 20


# -- the canonical set (sans-IO) -------------------------------------------------------------


def test_bep_6_published_allowed_fast_sets() -> None:
    # BEP 6, "Example results": 1313 pieces, info-hash aa..aa, node 80.4.4.200.
    assert allowed_fast_set("80.4.4.200", AA, 1313, 7) == [1059, 431, 808, 1217, 287, 376, 1188]
    assert allowed_fast_set("80.4.4.200", AA, 1313, 9) == [1059, 431, 808, 1217, 287, 376, 1188, 353, 508]


ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@settings(max_examples=200, deadline=None)
@given(ipv4 | ipv6, st.binary(min_size=20, max_size=20), st.integers(1, 5000), st.integers(0, 40))
def test_the_set_is_k_distinct_pieces_and_k_plus_one_extends_it(ip: str, info_hash: bytes, n: int, k: int) -> None:
    """BEP 6: 'if two peers offer k pieces fast it will be the same k, and if one offers k+1 it
    will be the same k plus one more'."""
    a = allowed_fast_set(ip, info_hash, n, k)
    assert len(a) == len(set(a)) == min(k, n)
    assert all(0 <= i < n for i in a)
    if k + 1 < n:  # with k + 1 >= n every piece is in it, in index order (libtorrent's way)
        assert allowed_fast_set(ip, info_hash, n, k + 1)[:k] == a


@given(st.integers(0, 2**24 - 1), st.integers(0, 255), st.integers(0, 255))
def test_addresses_of_one_24_share_a_set_and_a_mapped_address_counts_as_ipv4(net: int, x: int, y: int) -> None:
    one, other = (str(ipaddress.IPv4Address(net << 8 | h)) for h in (x, y))
    assert allowed_fast_set(one, AA, 1313) == allowed_fast_set(other, AA, 1313)
    assert allowed_fast_set(f"::ffff:{one}", AA, 1313) == allowed_fast_set(one, AA, 1313)


def test_ipv6_is_masked_to_its_64() -> None:
    assert masked_address("2001:db8:1:2:aaaa::1") == masked_address("2001:db8:1:2:bbbb::2")
    assert masked_address("2001:db8:1:2::1") != masked_address("2001:db8:1:3::1")
    assert masked_address("80.4.4.200") == bytes([80, 4, 4, 0])


def test_a_torrent_of_no_more_pieces_than_k_allows_every_piece() -> None:
    assert allowed_fast_set("10.0.0.1", AA, 10) == list(range(10))
    assert allowed_fast_set("10.0.0.1", AA, 3, 5) == [0, 1, 2]
    assert allowed_fast_set("10.0.0.1", AA, 0) == []


def test_grants_serve_a_bounded_number_of_requests_per_piece() -> None:
    grants = FastGrants([3, 7])
    assert not grants.take(4, 2)  # not granted
    assert all(grants.take(3, 2) for _ in range(2 * CHOKED_REQUESTS_PER_BLOCK))
    assert not grants.take(3, 2)  # its allowance is spent
    assert grants.take(7, 2)  # another piece's is not
    # BEP 6's reference rule: a peer holding more pieces than the set is no longer starting.
    assert grants.take(7, 2, peer_has=2) and not grants.take(7, 2, peer_has=3)


def test_offers_are_bounded_and_a_rejected_piece_is_withdrawn() -> None:
    offers = FastOffers()
    assert not offers
    assert offers.offer(5) and not offers.offer(5)  # the second says nothing new
    assert all(offers.offer(i) for i in range(100, 100 + MAX_OFFERED - 1))
    assert not offers.offer(1) and 1 not in offers
    offers.withdraw(5)
    assert 5 not in offers and offers.offer(1)


# -- our seeder that unchokes nobody, over real sockets ---------------------------------------


async def _read_until(a: Attacker, done: Any) -> None:
    """Read until ``done(events)`` holds (the peer hanging up first fails the test)."""
    async with asyncio.timeout(DEADLINE):
        while not done(a.events):
            assert await a.read(), "the seeder hung up"


def test_a_choked_peer_gets_its_allowed_fast_pieces_and_a_reject_for_any_other(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 40 * 32768 + 1000})
    granted = allowed_fast_set("127.0.0.1", meta.info_hash, meta.num_pieces)
    other = next(i for i in range(meta.num_pieces) if i not in granted)

    async def main() -> None:
        async with Session(listen="127.0.0.1", port=0, upload_slots=0) as s:
            await s.add_torrent(meta, seed_dir)
            a = Attacker(meta)
            await a.connect(("127.0.0.1", s.listen_port))
            a.send(ev.HaveNone(), ev.Interested())
            await _read_until(a, lambda es: sum(isinstance(e, ev.AllowedFast) for e in es) == len(granted))
            assert [e.index for e in a.events if isinstance(e, ev.AllowedFast)] == granted
            a.send(ev.Request(granted[0], 0, BLOCK_SIZE), ev.Request(other, 0, BLOCK_SIZE))
            await _read_until(a, lambda es: any(isinstance(e, ev.Reject) for e in es))
            await _read_until(a, lambda es: any(isinstance(e, ev.Piece) for e in es))
            assert not any(isinstance(e, ev.Unchoke) for e in a.events)
            [piece] = [e for e in a.events if isinstance(e, ev.Piece)]
            [reject] = [e for e in a.events if isinstance(e, ev.Reject)]
            assert (piece.index, piece.begin, len(piece.block)) == (granted[0], 0, BLOCK_SIZE)
            assert bytes(piece.block) == (seed_dir / "ds" / "data.bin").read_bytes()[
                granted[0] * meta.piece_length : granted[0] * meta.piece_length + BLOCK_SIZE
            ]
            assert reject == ev.Reject(other, 0, BLOCK_SIZE)
            a.close()

    asyncio.run(main())


# -- the simulator: a seeder that never unchokes ------------------------------------------------

MiB = 1 << 20


def test_a_leecher_never_unchoked_gets_exactly_its_allowed_fast_set() -> None:
    """One seeder with no upload slots, one leecher: the leecher verifies the ten pieces of the
    canonical set for its address (sent while choked), no other piece, byte-exact."""
    payload = make_payload(4 * MiB, seed=6)
    meta = metainfo_for_bytes("dataset.zip", payload, 64 << 10)  # 64 pieces
    specs = [
        PeerSpec("seed", up=2e6, down=2e6, seed=True, upload_slots=0),
        PeerSpec("leech", up=1e6, down=1e6, join_at=1.0),
    ]

    async def main() -> SwarmSim:
        sim = SwarmSim(meta, payload, seed=6)
        await sim.run(specs, until=120.0, stop_when_done=False)
        return sim

    sim = run_virtual(main(), seed=6)
    leech = sim.peers["leech"]
    expected = allowed_fast_set(leech.host.ip, meta.info_hash, meta.num_pieces)
    got = [e.piece for e in leech.events if isinstance(e, PieceVerified)]
    assert len(expected) == ALLOWED_FAST_SET_SIZE
    assert sorted(got) == sorted(expected)
    for i in expected:
        assert leech.storage.read_block(i, 0, meta.piece_length) == payload[i * meta.piece_length : (i + 1) * meta.piece_length]
    # What the seeder sent is those pieces, each once.
    assert sim.peers["seed"].torrent.uploaded_bytes == len(expected) * meta.piece_length


def test_a_leecher_that_another_peer_unchokes_takes_at_most_one_allowed_fast_piece() -> None:
    """Allowed fast is for starting: beside a seeder that unchokes it, a leecher asks a seeder that
    never does for one allowed-fast piece at most (while nobody had unchoked it yet), not its set."""
    payload = make_payload(4 * MiB, seed=7)
    meta = metainfo_for_bytes("dataset.zip", payload, 64 << 10)
    specs = [
        PeerSpec("open", up=2e6, down=2e6, seed=True),
        PeerSpec("closed", up=2e6, down=2e6, seed=True, upload_slots=0),
        PeerSpec("leech", up=1e6, down=4e6, join_at=1.0),
    ]

    async def main() -> SwarmSim:
        sim = SwarmSim(meta, payload, seed=7)
        await sim.run(specs, until=600.0)
        return sim

    sim = run_virtual(main(), seed=7)
    leech = sim.peers["leech"]
    assert leech.completed_at is not None and sim.byte_exact(leech)
    assert sim.peers["closed"].torrent.uploaded_bytes <= meta.piece_length


# -- against libtorrent -------------------------------------------------------------------------


@contextlib.contextmanager
def lt_session_without_slots(**overrides: Any) -> Iterator[Any]:
    """A libtorrent session that unchokes nobody: no upload slots, and its loopback peers counted
    against them (libtorrent's 'local' peer class ignores the slots by default)."""
    ses = lt.session({**LT_SETTINGS, "unchoke_slots_limit": 0, **overrides})
    local = ses.get_peer_class(lt.session.local_peer_class_id)
    local["ignore_unchoke_slots"] = False
    ses.set_peer_class(lt.session.local_peer_class_id, local)
    try:
        yield ses
    finally:
        for h in ses.get_torrents():
            ses.remove_torrent(h)
        ses.pause()


async def _lt_wait(handle: Any, what: str, pred: Any) -> Any:
    """Poll libtorrent's status (it has no callback into our loop) until ``pred`` holds."""
    end = time.monotonic() + DEADLINE
    while True:
        st = handle.status()
        if pred(st):
            return st
        assert time.monotonic() < end, f"libtorrent not {what}: {st.state}, {st.num_pieces} pieces"
        await asyncio.sleep(0.05)


def _lt_add(ses: Any, meta: Metainfo, save: Path) -> Any:
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(meta.to_bytes())
    atp.save_path = str(save)
    return ses.add_torrent(atp)


def test_our_leecher_gets_the_allowed_fast_pieces_of_a_libtorrent_seeder_that_unchokes_nobody(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 40 * 32768})
    source = (seed_dir / "ds" / "data.bin").read_bytes()

    async def main() -> None:
        with lt_session_without_slots() as ses:
            h = _lt_add(ses, meta, seed_dir)
            await _lt_wait(h, "seeding", lambda st: st.is_seeding)
            async with Session(listen="127.0.0.1", port=0) as s:
                t = await s.add_torrent(meta, tmp_path / "ours", peers=[("127.0.0.1", ses.listen_port())])
                verified: list[int] = []
                offered: set[int] = set()
                all_in = asyncio.Event()

                def on_event(e: object) -> None:
                    if isinstance(e, PieceVerified):
                        verified.append(e.piece)
                    peer = next(iter(t.peers.values()), None)
                    if peer is not None and peer.offers:
                        offered.update(peer.offers.pieces)
                    if offered and offered <= set(verified):
                        all_in.set()

                t.add_listener(on_event)
                async with asyncio.timeout(DEADLINE):
                    await all_in.wait()
                [peer] = t.peers.values()
                assert peer.peer_choking  # never unchoked: all of it came as allowed fast
                assert set(verified) == offered and 0 < len(offered) <= 5  # libtorrent's allowed_fast_set_size
                for i in verified:
                    assert t.storage.read_block(i, 0, meta.piece_length) == source[i * 32768 : (i + 1) * 32768]

    asyncio.run(main())


def test_a_libtorrent_leecher_gets_our_allowed_fast_pieces_from_a_seeder_that_unchokes_nobody(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 40 * 32768})
    expected = set(allowed_fast_set("127.0.0.1", meta.info_hash, meta.num_pieces))

    async def main() -> None:
        async with Session(listen="127.0.0.1", port=0, upload_slots=0) as s:
            t = await s.add_torrent(meta, seed_dir)
            ses = lt.session(LT_SETTINGS)
            try:
                h = _lt_add(ses, meta, tmp_path / "lt")
                h.connect_peer(("127.0.0.1", s.listen_port))
                st = await _lt_wait(h, "done with its allowed-fast pieces", lambda st: st.num_pieces >= len(expected))
                # libtorrent counts a piece once it passed its hash check: byte-exact by construction.
                assert {i for i, have in enumerate(st.pieces) if have} == expected
                assert all(p.am_choking for p in t.peers.values())
                assert t.status().uploaded == len(expected) * meta.piece_length
            finally:
                for handle in ses.get_torrents():
                    ses.remove_torrent(handle)
                ses.pause()

    asyncio.run(main())
