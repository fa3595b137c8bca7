"""Hostile peers whose harm takes time, in the simulator: slot hogs, peers that never read, a seeder
that rejects everything.  Virtual time lets them run for minutes in a moment; the good peers are
real engine sessions, and the attackers speak the real wire protocol over the simulated network."""

from __future__ import annotations

import asyncio

from pyowtorrent.engine.events import PeerDisconnected
from pyowtorrent.sim.swarm import PORT, PeerSpec, SwarmSim
from pyowtorrent.wire import events as ev

from ..hostile import Attacker, ignore_closed
from .test_scenarios import LEECH_DOWN, LEECH_UP, MiB, SEED_UP, assert_all_complete_byte_exact, simulate


def seeder_ip(sim: SwarmSim) -> str:
    return sim.peers["seed"].host.ip


async def until_joined(sim: SwarmSim, name: str) -> None:
    while name not in sim.peers:
        await asyncio.sleep(0.1)


def test_idle_connections_holding_every_slot_make_way_for_a_real_peer() -> None:
    """50 handshaked connections from 10 addresses fill the seeder's 50 connections and only send
    keep-alives; a leecher arriving a minute later still gets in (an idle one is evicted)."""
    hogs: list[Attacker] = []

    async def hog_the_seeder(sim: SwarmSim) -> None:
        assert sim.net is not None
        await until_joined(sim, "seed")
        hosts = [sim.net.add_host(f"10.66.0.{i + 1}", up=1e6, down=1e6) for i in range(10)]
        for i in range(50):
            a = Attacker(sim.meta, hosts[i // 5].network)
            await a.connect((seeder_ip(sim), PORT))
            hogs.append(a)
            asyncio.ensure_future(a.read_until_closed()).add_done_callback(ignore_closed)
        for _ in range(20):  # keep-alives every 30 s: the idle timeout never fires
            await asyncio.sleep(30)
            for a in hogs:
                if a.writer is not None and not a.writer.is_closing():
                    a.send(ev.KeepAlive())

    specs = [
        PeerSpec("seed", up=SEED_UP, down=LEECH_DOWN, seed=True),
        PeerSpec("late", up=LEECH_UP, down=LEECH_DOWN, join_at=60.0, knows=("seed",)),
    ]
    sim = simulate(4 * MiB, specs, until=600.0, monitors=[hog_the_seeder])
    assert len(hogs) == 50
    assert_all_complete_byte_exact(sim)
    late = sim.peers["late"]
    assert late.completed_at is not None and late.completed_at < 60.0 + 60.0


def test_peers_that_never_read_lose_their_upload_slots_then_their_connections() -> None:
    """Four peers get unchoked, ask for blocks and never read a byte; the seeder chokes them once
    they stall, never unchokes them again, drops them, and serves a real leecher."""
    readers_ips: set[str] = set()
    unchoked_later: list[set[str]] = []

    async def never_read(sim: SwarmSim) -> None:
        assert sim.net is not None
        await until_joined(sim, "seed")
        attackers = []
        for i in range(4):
            host = sim.net.add_host(f"10.77.0.{i + 1}", up=1e6, down=1e6)
            readers_ips.add(host.ip)
            a = Attacker(sim.meta, host.network)
            await a.connect((seeder_ip(sim), PORT))
            a.send(ev.HaveNone(), ev.Interested())
            attackers.append(a)
        async def until_unchoked(a: Attacker) -> None:
            while not any(isinstance(e, ev.Unchoke) for e in a.events) and await a.read():
                pass

        await asyncio.gather(*(until_unchoked(a) for a in attackers))
        # Ask for more than the link's window holds (8 MiB), then never read again.
        blocks = [ev.Request(i, b, 16384) for i in range(32) for b in range(0, sim.meta.piece_length, 16384)]
        for a in attackers:
            a.send(*blocks)
        seeder = sim.peers["seed"].torrent
        while True:
            await asyncio.sleep(0.5)
            if sim.now() > 30.0:
                unchoked_later.append({a[0] for a, p in seeder.peers.items() if not p.am_choking} & readers_ips)

    specs = [
        PeerSpec("seed", up=SEED_UP, down=LEECH_DOWN, seed=True, upload_slots=4),
        PeerSpec("good", up=LEECH_UP, down=LEECH_DOWN, join_at=5.0, knows=("seed",)),
    ]
    sim = simulate(16 * MiB, specs, until=120.0, monitors=[never_read], stop_when_done=False)
    assert_all_complete_byte_exact(sim)
    assert unchoked_later and not any(unchoked_later)  # from 30 s on, none of them held a slot
    gone = [e for e in sim.peers["seed"].events if isinstance(e, PeerDisconnected) and e.peer[0] in readers_ips]
    assert len(gone) == 4 and all("stopped reading" in e.reason for e in gone)
    assert sim.net is not None
    # Really gone: a gentle close would wait forever for them to read what is queued.
    assert all(sim.net.host(ip).connections == 0 for ip in readers_ips)


def test_a_seeder_that_rejects_every_request_is_not_asked_forever() -> None:
    """A 'seeder' that claims every piece, unchokes, and rejects each request (BEP 6): the leecher
    backs off from it and downloads from the real seeder; the rejecter sees few requests."""
    asked = [0]

    async def reject_everything(sim: SwarmSim) -> None:
        assert sim.net is not None
        host = sim.net.add_host("10.88.0.1", up=10e6, down=10e6)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            a = Attacker(sim.meta, host.network)
            a.reader, a.writer = reader, writer
            a.events += a.conn.receive_data(await reader.readexactly(68))
            writer.write(a.conn.handshake_bytes())
            a.send(ev.HaveAll(), ev.Unchoke())
            while await a.read():
                for e in a.events:
                    if isinstance(e, ev.Request):
                        asked[0] += 1
                        a.send(ev.Reject(e.index, e.begin, e.length))
                a.events.clear()

        await host.listen(serve, host.ip, PORT)
        await asyncio.sleep(3600)

    specs = [
        PeerSpec("seed", up=SEED_UP, down=LEECH_DOWN, seed=True),
        PeerSpec("leech", up=LEECH_UP, down=LEECH_DOWN, join_at=1.0, knows=("seed",)),
    ]

    async def tell_leecher(sim: SwarmSim) -> None:
        await until_joined(sim, "leech")
        sim.peers["leech"].torrent.add_peer("10.88.0.1", PORT)

    sim = simulate(16 * MiB, specs, until=600.0, monitors=[reject_everything, tell_leecher])
    assert_all_complete_byte_exact(sim)
    assert 0 < asked[0] < 500


def test_blocks_a_rejecting_peer_gives_back_go_to_an_idle_honest_peer() -> None:
    """C holds every request for pieces 0-31 and then rejects them all; H, honest, has the same pieces
    but connected while C held them, so it was asked for nothing; D has the rest.  Once C's blocks come
    back, H must be asked (it sends nothing that would prompt us: a partial seed sends no haves)."""
    from pyowtorrent.wire.bitfield import bitfield_bytes

    asked = {"C": 0, "H": 0, "D": 0}
    release = asyncio.Event()

    async def fake(sim: SwarmSim, name: str, ip: str, pieces: range, reject: bool) -> None:
        assert sim.net is not None
        host = sim.net.add_host(ip, up=10e6, down=10e6)
        a = Attacker(sim.meta, host.network)
        await a.connect((sim.peers["leech"].host.ip, PORT))
        a.send(ev.Bitfield(bitfield_bytes([i in pieces for i in range(sim.meta.num_pieces)])), ev.Unchoke())
        while await a.read():
            requests = [e for e in a.events if isinstance(e, ev.Request)]
            a.events.clear()
            asked[name] += len(requests)
            if reject:
                await release.wait()
                a.send(*(ev.Reject(r.index, r.begin, r.length) for r in requests))
            else:
                a.send(*(ev.Piece(r.index, r.begin, sim.payload[r.index * sim.meta.piece_length + r.begin :][: r.length]) for r in requests))

    async def scenario(sim: SwarmSim) -> None:
        await until_joined(sim, "leech")
        n = sim.meta.num_pieces
        tasks = [asyncio.ensure_future(fake(sim, "C", "10.99.0.1", range(32), reject=True))]
        await asyncio.sleep(0.3)
        tasks.append(asyncio.ensure_future(fake(sim, "H", "10.99.0.2", range(32), reject=False)))
        await asyncio.sleep(0.3)
        tasks.append(asyncio.ensure_future(fake(sim, "D", "10.99.0.3", range(32, n), reject=False)))
        await asyncio.sleep(0.5)
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    from pyowtorrent.sim import make_payload, metainfo_for_bytes, run_virtual

    payload = make_payload(40 * 16384, seed=40)
    meta = metainfo_for_bytes("x", payload, 16384)

    async def main() -> SwarmSim:
        sim = SwarmSim(meta, payload, seed=1)
        await sim.run([PeerSpec("leech", up=10e6, down=10e6)], until=60.0, monitors=[scenario])
        return sim

    sim = run_virtual(main(), seed=1)
    assert_all_complete_byte_exact(sim)
    assert asked["H"] > 0
