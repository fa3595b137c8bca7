"""Peer exchange (BEP 11) in a simulated swarm: a leecher that knows one peer finds the rest.

A seeder and three leechers find each other as through a tracker (``SwarmSim``).
Then a lone leecher joins on a host of its own, given one address only, a
leecher's (so it cannot finish without finding the seeder), and an observer,
a raw wire peer that advertises ``ut_pex``, connects to the seeder and keeps
what it is told and when.  Everything runs in virtual time, so the minute BEP
11 puts between two messages costs nothing, and a run is a function of its
seed (checked: two runs give the same trace and the same messages).

Public torrent: the lone leecher learns the other peers' addresses through
PEX, connects to them and completes byte-exact; the seeder's messages to the
observer are a minute apart or more, at most 50 contacts a list, list every
peer it trades with (the lone one too, once it joined) and drop the one that
left.  Private torrent (BEP 27): no PEX either way; the lone leecher knows
and meets only the peer it was given, and still completes through it.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field

from pyowtorrent.engine.events import Completed, PeerConnected, TorrentEvent
from pyowtorrent.engine.services import InlineDisk
from pyowtorrent.engine.session import Session
from pyowtorrent.engine.torrent import Torrent
from pyowtorrent.metainfo.bencoding import encode
from pyowtorrent.metainfo.torrent_file import Metainfo, parse_metainfo
from pyowtorrent.sim import make_payload, metainfo_for_bytes, run_virtual
from pyowtorrent.sim.swarm import PORT, PeerSpec, SwarmSim
from pyowtorrent.storage.memory import MemoryStorage
from pyowtorrent.wire import PeerConnection
from pyowtorrent.wire import events as ev
from pyowtorrent.wire.pex import PexFlags

from ..hostile import Attacker, ignore_closed

MiB = 1 << 20
PIECE = 64 << 10
LONE_IP = "10.99.0.1"
OBSERVER_IP = "10.98.0.1"
LONE_JOINS = 5.0
C_LEAVES = 150.0
UNTIL = 300.0


@functools.cache
def torrent(private: bool) -> tuple[Metainfo, bytes]:
    payload = make_payload(4 * MiB, seed=11)
    meta = metainfo_for_bytes("dataset.zip", payload, PIECE)
    if private:
        info = {b"name": b"dataset.zip", b"piece length": PIECE, b"length": len(payload), b"pieces": meta.piece_hashes}
        meta = parse_metainfo(encode({b"info": {**info, b"private": 1}}))
        assert meta.private
    return meta, payload


@dataclass
class Lone:
    torrent: Torrent | None = None
    storage: MemoryStorage | None = None
    connected: set[str] = field(default_factory=set)  # IPs it held a connection with
    completed_at: float | None = None
    known: set[tuple[str, int]] = field(default_factory=set)
    learned: int = 0


@dataclass
class Observer:
    messages: list[tuple[float, ev.Pex]] = field(default_factory=list)
    extension_handshake: ev.ExtensionHandshake | None = None


async def until_joined(sim: SwarmSim, name: str) -> None:
    while name not in sim.peers:
        await asyncio.sleep(0.1)


def lone_leecher(lone: Lone, knows: str):  # type: ignore[no-untyped-def]
    """A monitor: the lone leecher, on its own host, given ``knows``'s address and nothing else."""

    async def run(sim: SwarmSim) -> None:
        assert sim.net is not None
        await until_joined(sim, knows)
        await asyncio.sleep(max(0.0, LONE_JOINS - sim.now()))
        host = sim.net.add_host(LONE_IP, up=1e6, down=4e6, latency=0.03)
        session = Session(listen=LONE_IP, port=PORT, network=host.network, disk=InlineDisk(), seed=sim.seed + 1)
        await session.start()
        try:
            lone.storage = MemoryStorage(sim.meta, pool=sim.pool)
            t = await session.add_torrent(sim.meta, storage=lone.storage, peers=[(sim.peers[knows].host.ip, PORT)])
            lone.torrent = t

            def record(e: TorrentEvent) -> None:
                if isinstance(e, PeerConnected):
                    lone.connected.add(e.peer[0])
                elif isinstance(e, Completed):
                    lone.completed_at = e.at

            t.add_listener(record)
            await asyncio.sleep(UNTIL)  # the run ends first, cancelling this
        finally:
            if lone.torrent is not None:
                lone.known = set(lone.torrent.swarm.connections.known)
                lone.learned = lone.torrent.swarm.pex.learned
            await session.close()

    return run


def observer_of_the_seeder(observer: Observer):  # type: ignore[no-untyped-def]
    """A monitor: a raw wire peer that speaks ut_pex, connected to the seeder, recording its PEX."""

    async def run(sim: SwarmSim) -> None:
        assert sim.net is not None
        await until_joined(sim, "seed")
        await asyncio.sleep(max(0.0, 3.0 - sim.now()))
        host = sim.net.add_host(OBSERVER_IP, up=1e6, down=1e6)
        a = Attacker(sim.meta, host.network)
        m = sim.meta
        a.conn = PeerConnection(m.info_hash, a.conn.local.peer_id, m.num_pieces, m.piece_length, m.total_length, pex=True)
        await a.connect((sim.peers["seed"].host.ip, PORT))
        a.send(ev.ExtensionHandshake(m={"ut_pex": 3}), ev.HaveNone())

        async def keep_alive() -> None:
            while True:  # the seeder drops a peer silent for three minutes
                await asyncio.sleep(60)
                a.send(ev.KeepAlive())

        pinger = asyncio.ensure_future(keep_alive())
        pinger.add_done_callback(ignore_closed)
        try:
            while await a.read():
                for e in a.events:
                    if isinstance(e, ev.Pex):
                        observer.messages.append((sim.now(), e))
                    elif isinstance(e, ev.ExtensionHandshake):
                        observer.extension_handshake = e
                a.events.clear()
        finally:
            pinger.cancel()
            a.close()

    return run


def simulate(private: bool, seed: int = 3) -> tuple[SwarmSim, Lone, Observer]:
    meta, payload = torrent(private)
    lone, observer = Lone(), Observer()
    specs = [
        PeerSpec("seed", up=2e6, down=4e6, seed=True),
        PeerSpec("a", up=1e6, down=4e6, join_at=0.5),
        PeerSpec("b", up=1e6, down=4e6, join_at=1.0),
        PeerSpec("c", up=1e6, down=4e6, join_at=1.5, leave_at=C_LEAVES),
    ]

    async def main() -> SwarmSim:
        sim = SwarmSim(meta, payload, seed=seed)
        monitors = [lone_leecher(lone, "a"), observer_of_the_seeder(observer)]
        await sim.run(specs, until=UNTIL, monitors=monitors, stop_when_done=False)
        return sim

    return run_virtual(main(), seed=seed), lone, observer


def test_a_leecher_that_knows_one_peer_finds_the_others_through_pex() -> None:
    sim, lone, observer = simulate(private=False)
    ip = {name: p.host.ip for name, p in sim.peers.items()}

    # The lone leecher was given a's address only; the others it learned, met, and finished with.
    assert {ip["seed"], ip["b"], ip["c"]} <= {host for host, _ in lone.known}
    assert lone.learned >= 3
    assert {ip["seed"], ip["a"], ip["b"], ip["c"]} <= lone.connected
    assert lone.completed_at is not None and lone.storage is not None
    assert lone.storage.content() == sim.payload

    # What the seeder told the observer, and when.
    assert observer.extension_handshake is not None and "ut_pex" in observer.extension_handshake.m
    times = [t for t, _ in observer.messages]
    assert len(times) >= 2
    # BEP 11: one a minute.  These are arrival times: the seeder's busy upload pipe may hold a
    # message back a few chunks (the first here by some 80 ms), so a second of slack, less than
    # the torrent's tick: a sender that did not wait would show gaps of one tick.
    assert all(later - earlier >= 59.0 for earlier, later in zip(times, times[1:]))
    assert all(len(m.added) <= 50 and len(m.dropped) <= 50 for _, m in observer.messages)
    added = {(c.ip, c.port): (t, c.flags) for t, m in observer.messages for c in m.added}
    dropped = {a: t for t, m in observer.messages for a in m.dropped}
    everyone = {(ip[n], PORT) for n in ("a", "b", "c")} | {(LONE_IP, PORT)}
    assert everyone <= set(added)
    assert (OBSERVER_IP, PORT) not in added and not any(host == OBSERVER_IP for host, _ in added)  # not itself
    assert (ip["c"], PORT) in dropped and dropped[(ip["c"], PORT)] >= C_LEAVES  # it left
    # Everyone dialled the seeder, so none is flagged reachable; the lone one is a seed by its turn.
    assert not any(flags & PexFlags.REACHABLE for _, flags in added.values())
    when, flags = added[(LONE_IP, PORT)]
    assert when > lone.completed_at and flags & PexFlags.SEED


def test_pex_in_the_simulator_is_deterministic_by_seed() -> None:
    first, second = simulate(private=False), simulate(private=False)
    assert first[0].digest() == second[0].digest()
    assert [(t, m) for t, m in first[2].messages] == [(t, m) for t, m in second[2].messages]
    assert first[1].known == second[1].known


def test_a_private_torrent_exchanges_no_peers() -> None:
    sim, lone, observer = simulate(private=True)
    ip_a = sim.peers["a"].host.ip
    assert lone.known == {(ip_a, PORT)}
    assert lone.learned == 0
    assert lone.connected == {ip_a}  # nobody learned of it either
    assert observer.extension_handshake is not None and "ut_pex" not in observer.extension_handshake.m
    assert observer.messages == []
    # It still downloads, from the one peer it was given.
    assert lone.completed_at is not None and lone.storage is not None
    assert lone.storage.content() == sim.payload
