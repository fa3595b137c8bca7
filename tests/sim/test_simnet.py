"""The swarm simulator's infrastructure: virtual time, the in-memory network, in-memory storage.

Every time asserted here is virtual (``loop.time()`` on a VirtualTimeLoop);
none of these tests reads the wall clock or sleeps for real.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

import pytest

from pyowtorrent.engine.net import Network
from pyowtorrent.errors import StorageError
from pyowtorrent.sim import (
    MemoryStorage,
    SimHost,
    SimNetwork,
    SimulationStalled,
    VirtualTimeLoop,
    make_payload,
    metainfo_for_bytes,
    run_virtual,
)
from pyowtorrent.sim.network import DEFAULT_CHUNK, HIGH_WATER
from pyowtorrent.storage.create import create_torrent

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def now() -> float:
    return asyncio.get_running_loop().time()


async def read_all(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything up to EOF, and the virtual time the last byte came."""
    parts = []
    last = now()
    while data := await reader.read(1 << 20):
        parts.append(data)
        last = now()
    return b"".join(parts), last


async def serve_one(host: SimHost, port: int = 6881) -> asyncio.Future[Streams]:
    """Listen on ``host:port``; the future gets the first accepted connection."""
    accepted: asyncio.Future[Streams] = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not accepted.done():
            accepted.set_result((reader, writer))

    await host.network.listen(handler, "0.0.0.0", port)
    return accepted


async def pair(a: SimHost, b: SimHost, port: int = 6881) -> tuple[Streams, Streams]:
    accepted = await serve_one(b, port)
    client = await a.network.connect(b.ip, port)
    return client, await accepted


# -- virtual time ----------------------------------------------------------------------


def test_sleep_jumps_virtual_time_without_waiting() -> None:
    async def main() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        start = loop.time()
        await asyncio.sleep(3600)
        hour = loop.time()
        await asyncio.sleep(3 * 86400)  # longer than asyncio's longest single wait (a day)
        return start, hour, loop.time()

    assert run_virtual(main()) == (0.0, 3600.0, 3600.0 + 3 * 86400)


def test_wait_for_and_timeout_fire_at_their_virtual_times() -> None:
    async def main() -> list[float]:
        fired = []
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(100), 2.5)
        fired.append(now())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.Event().wait()
        fired.append(now())
        # A body that finishes in time is not cancelled, and takes its own time.
        async with asyncio.timeout(10):
            await asyncio.sleep(4)
        fired.append(now())
        return fired

    assert run_virtual(main()) == [2.5, 7.5, 11.5]


def test_timers_fire_in_time_order() -> None:
    async def main() -> list[int]:
        order: list[int] = []

        async def at(t: float, tag: int) -> None:
            await asyncio.sleep(t)
            order.append(tag)

        await asyncio.gather(*(at(t, tag) for tag, t in enumerate([5.0, 0.5, 3.0, 0.001, 1e4])))
        return order

    assert run_virtual(main()) == [3, 1, 2, 0, 4]


def test_executor_work_runs_inline_in_no_virtual_time() -> None:
    def boom() -> None:
        raise ValueError("from the worker")

    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(1)
        result = await loop.run_in_executor(None, sum, [1, 2, 3])
        assert await asyncio.to_thread(lambda: 7) == 7
        with pytest.raises(ValueError, match="from the worker"):
            await loop.run_in_executor(None, boom)
        return result, loop.time()

    assert run_virtual(main()) == (6, 1.0)


def test_a_deadlock_raises_simulation_stalled() -> None:
    async def main() -> None:
        await asyncio.sleep(10)
        await asyncio.Event().wait()

    with pytest.raises(SimulationStalled, match=r"t=10\.0+.*main"):
        run_virtual(main())


def test_both_ends_waiting_to_read_stalls() -> None:
    async def main() -> None:
        net = SimNetwork()
        a = net.add_host("10.0.0.1", latency=0.01)
        b = net.add_host("10.0.0.2", latency=0.01)
        (ra, wa), (rb, wb) = await pair(a, b)  # (a StreamWriter closes its transport when collected)
        try:
            await asyncio.gather(ra.read(1), rb.read(1))
        finally:
            wa.close()
            wb.close()

    with pytest.raises(SimulationStalled):
        run_virtual(main())


# -- the network: timing -----------------------------------------------------------------


def test_a_transfer_arrives_when_the_model_says() -> None:
    n = 5_000_000
    up, down, lat_a, lat_b = 2e6, 8e6, 0.030, 0.020

    async def main() -> tuple[float, float, bytes, int, int]:
        net = SimNetwork()
        a = net.add_host("10.0.0.1", up=up, latency=lat_a)
        b = net.add_host("10.0.0.2", down=down, latency=lat_b)
        (ra, wa), (rb, wb) = await pair(a, b)
        connected = now()
        start = now()
        wa.write(payload)
        wa.close()
        data, last = await read_all(rb)
        return connected, last - start, data, a.bytes_up, b.bytes_down

    payload = make_payload(n, seed=3)
    connected, took, data, sent, received = run_virtual(main())
    latency = lat_a + lat_b
    assert connected == pytest.approx(2 * latency)  # one round trip to set up
    # The uplink is the bottleneck; the last chunk also crosses the downlink.
    assert n / up + latency - 1e-9 <= took <= n / up + latency + DEFAULT_CHUNK / down + 1e-9
    assert data == payload
    assert sent == received == n


def test_the_slower_pipe_sets_the_rate() -> None:
    n = 2_000_000

    async def main() -> float:
        net = SimNetwork()
        a = net.add_host("10.0.0.1", up=50e6)
        b = net.add_host("10.0.0.2", down=1e6)
        (ra, wa), (rb, wb) = await pair(a, b)
        start = now()
        wa.write(bytes(n))
        wa.close()
        data, last = await read_all(rb)
        assert len(data) == n
        return last - start

    took = run_virtual(main())
    assert n / 1e6 - 1e-9 <= took <= n / 1e6 + DEFAULT_CHUNK / 50e6 + 1e-9


def test_two_connections_share_one_uplink_evenly() -> None:
    n = 1_000_000
    up = 1e6

    async def main() -> tuple[list[int], list[float]]:
        net = SimNetwork()
        a = net.add_host("10.0.0.1", up=up)
        others = [net.add_host(f"10.0.0.{i}") for i in (2, 3)]
        conns = [await pair(a, o) for o in others]
        counts = [0, 0]
        finished = [0.0, 0.0]

        async def receive(i: int, reader: asyncio.StreamReader) -> None:
            while data := await reader.read(1 << 16):
                counts[i] += len(data)
            finished[i] = now()

        receivers = [asyncio.create_task(receive(i, c[1][0])) for i, c in enumerate(conns)]
        start = now()
        for (_, writer), _ in conns:
            writer.write(bytes(n))
            writer.close()
        await asyncio.sleep(n / up)  # half of the 2n bytes have left
        halfway = list(counts)
        await asyncio.gather(*receivers)
        return halfway, [t - start for t in finished]

    halfway, took = run_virtual(main())
    for got in halfway:
        assert abs(got - n / 2) <= DEFAULT_CHUNK
    for t in took:
        assert abs(t - 2 * n / up) <= DEFAULT_CHUNK / up


def test_two_senders_share_one_downlink_evenly() -> None:
    n = 1_000_000
    down = 1e6

    async def main() -> list[int]:
        net = SimNetwork()
        c = net.add_host("10.0.0.9", down=down)
        counts = [0, 0]
        conns = []
        for i in (0, 1):
            sender = net.add_host(f"10.0.0.{i + 1}")
            (rs, w), (r, wr) = await pair(sender, c, port=7000 + i)
            conns.append((rs, w, r, wr))

            async def receive(i: int, reader: asyncio.StreamReader) -> None:
                while data := await reader.read(1 << 16):
                    counts[i] += len(data)

            asyncio.create_task(receive(i, r))
        for _, w, _, _ in conns:
            w.write(bytes(n))
        await asyncio.sleep(n / down)
        for _, w, _, wr in conns:
            w.close()
            wr.close()
        return counts

    for got in run_virtual(main()):
        assert abs(got - n / 2) <= 2 * DEFAULT_CHUNK


# -- the network: streams ---------------------------------------------------------------


def test_delivery_is_fifo_and_byte_exact_both_ways() -> None:
    rng = random.Random(5)
    to_b = [rng.randbytes(rng.choice([1, 13, 4000, 16384, 16397, 100_000])) for _ in range(200)]
    to_a = [rng.randbytes(rng.choice([1, 7, 20_000, 70_000])) for _ in range(100)]

    async def main() -> tuple[bytes, bytes]:
        net = SimNetwork()
        a = net.add_host("10.0.0.1", up=3e6, down=5e6, latency=0.05)
        b = net.add_host("10.0.0.2", up=1e6, down=4e6, latency=0.01)
        (ra, wa), (rb, wb) = await pair(a, b)

        async def send(writer: asyncio.StreamWriter, parts: list[bytes]) -> None:
            for p in parts:
                writer.write(p)
                await writer.drain()

        async def receive(reader: asyncio.StreamReader, n: int) -> bytes:
            return await reader.readexactly(n)

        _, _, got_b, got_a = await asyncio.gather(
            send(wa, to_b), send(wb, to_a), receive(rb, sum(map(len, to_b))), receive(ra, sum(map(len, to_a)))
        )
        wa.close()
        wb.close()
        return got_a, got_b

    got_a, got_b = run_virtual(main())
    assert got_b == b"".join(to_b)
    assert got_a == b"".join(to_a)


def test_streams_are_asyncio_streams_with_addresses() -> None:
    async def main() -> None:
        net = SimNetwork()
        a = net.add_host("10.0.0.1")
        b = net.add_host("10.0.0.2")
        view: Network = b.network  # (mypy checks that both are Networks)
        whole: Network = net
        accepted: asyncio.Future[Streams] = asyncio.get_running_loop().create_future()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            accepted.set_result((r, w))

        listener = await view.listen(handler, "0.0.0.0", 0)
        [(ip, port)] = listener.addresses()
        assert ip == "10.0.0.2" and port > 0
        reader, writer = await whole.connect(ip, port, local_host="10.0.0.1")
        rb, wb = await accepted
        assert isinstance(reader, asyncio.StreamReader) and isinstance(writer, asyncio.StreamWriter)
        assert writer.get_extra_info("peername") == (ip, port)
        assert wb.get_extra_info("peername") == writer.get_extra_info("sockname")
        assert writer.get_extra_info("sockname")[0] == "10.0.0.1"
        writer.close()
        wb.close()
        listener.close()
        await listener.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await a.network.connect(ip, port)

    run_virtual(main())


def test_drain_waits_while_the_receiver_does_not_read() -> None:
    n = 16 << 20
    block = 64 << 10
    window = 512 << 10

    async def main() -> None:
        net = SimNetwork(window=window)
        a = net.add_host("10.0.0.1", up=10e6, latency=0.01)
        b = net.add_host("10.0.0.2", down=10e6, latency=0.01)
        (ra, wa), (rb, wb) = await pair(a, b)
        sent = 0
        data = make_payload(n, seed=9)

        async def send() -> None:
            nonlocal sent
            for i in range(0, n, block):
                wa.write(data[i : i + block])
                sent += block
                await wa.drain()
            wa.close()

        sender = asyncio.create_task(send())
        await asyncio.sleep(100)  # long enough to send everything, were the writer not held back
        parked_at = sent
        await asyncio.sleep(100)
        assert sent == parked_at < n  # the writer is parked in drain()
        queued = wa.transport.get_write_buffer_size()
        assert queued <= HIGH_WATER + block
        # What left the queue is in flight (at most the window) or in the paused reader's buffer.
        reader_buffer = 2 * (1 << 16) + DEFAULT_CHUNK  # StreamReader pauses above twice its limit
        assert sent - queued <= window + reader_buffer
        assert a.bytes_up <= window + reader_buffer
        got, _ = await read_all(rb)
        await sender
        assert got == data

    run_virtual(main())


def test_close_delivers_the_data_then_eof_after_the_latency() -> None:
    async def main() -> None:
        net = SimNetwork()
        a = net.add_host("10.0.0.1", latency=0.1)
        b = net.add_host("10.0.0.2", latency=0.15)
        (ra, wa), (rb, wb) = await pair(a, b)
        t0 = now()
        wa.write(b"last words")
        wa.close()
        await wa.wait_closed()  # the queue has left: the closer is done at once
        assert now() == t0
        assert await rb.readexactly(10) == b"last words"
        assert now() == pytest.approx(t0 + 0.25)
        assert await rb.read() == b""
        assert rb.at_eof()
        assert wb.is_closing()  # the other end is closed too
        with pytest.raises(ConnectionResetError):
            wb.write(b"x")
            await wb.drain()

    run_virtual(main())


def test_closing_both_ends_finishes_both_even_with_data_unread() -> None:
    async def main() -> None:
        net = SimNetwork(window=256 << 10)
        a = net.add_host("10.0.0.1", up=1e6, latency=0.01)
        b = net.add_host("10.0.0.2", latency=0.01)
        (ra, wa), (rb, wb) = await pair(a, b)
        wa.write(bytes(4 << 20))  # more than b will ever read: a's queue cannot empty
        wa.close()
        await asyncio.sleep(5)
        assert not rb.at_eof()
        wb.close()  # b gives up without reading
        await asyncio.wait_for(asyncio.gather(wa.wait_closed(), wb.wait_closed()), 1.0)
        assert a.connections == b.connections == 0

    run_virtual(main())


def test_abort_resets_the_other_end_after_the_latency() -> None:
    async def main() -> None:
        net = SimNetwork()
        a = net.add_host("10.0.0.1", up=1e4, latency=0.2)
        b = net.add_host("10.0.0.2", latency=0.3)
        (ra, wa), (rb, wb) = await pair(a, b)
        t0 = now()
        wa.write(bytes(100_000))  # a chunk on the wire, the rest queued
        wa.transport.abort()
        with pytest.raises(ConnectionResetError):
            await rb.read(1 << 20)
        assert now() == pytest.approx(t0 + 0.5)
        await asyncio.sleep(20)
        assert b.bytes_down == 0  # neither the chunk on the wire nor the queue got through

    run_virtual(main())


def test_connect_without_a_listener_is_refused_after_a_round_trip() -> None:
    async def main() -> None:
        net = SimNetwork()
        a = net.add_host("10.0.0.1", latency=0.05)
        net.add_host("10.0.0.2", latency=0.02)
        t0 = now()
        with pytest.raises(ConnectionRefusedError):
            await a.network.connect("10.0.0.2", 6881)
        assert now() - t0 == pytest.approx(0.14)

    run_virtual(main())


def test_connect_to_an_unknown_address_fails_late() -> None:
    async def main() -> None:
        net = SimNetwork(unreachable_delay=3.0)
        a = net.add_host("10.0.0.1")
        with pytest.raises(OSError) as info:
            await a.network.connect("10.9.9.9", 6881)
        assert not isinstance(info.value, ConnectionRefusedError)
        assert now() == 3.0
        # A dial under a shorter timeout gives up first, as an engine's would.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(a.network.connect("10.9.9.9", 6881), 1.0)
        assert now() == 4.0

    run_virtual(main())


def test_going_offline_resets_both_ends_and_refuses_until_back() -> None:
    async def main() -> None:
        net = SimNetwork()
        a = net.add_host("10.0.0.1", up=1e6, latency=0.05)
        b = net.add_host("10.0.0.2", latency=0.05)
        (ra, wa), (rb, wb) = await pair(a, b)
        wa.write(bytes(1_000_000))  # in flight when the host vanishes
        await asyncio.sleep(0.2)
        t0 = now()
        b.go_offline()
        for reader in (ra, rb):
            with pytest.raises(ConnectionResetError):
                while await reader.read(1 << 20):
                    pass
        assert now() == t0  # at once: the link is cut
        assert wa.is_closing() and wb.is_closing()
        assert a.connections == b.connections == 0
        with pytest.raises(ConnectionRefusedError):
            await a.network.connect(b.ip, 6881)
        b.go_online()
        reader, writer = await a.network.connect(b.ip, 6881)
        writer.close()
        await asyncio.sleep(1)  # the end of stream reaches the other end, which closes
        assert a.connections == b.connections == 0

    run_virtual(main())


# -- determinism -------------------------------------------------------------------------


def swarm_trace(seed: int) -> str:
    """A digest of every read in a small random swarm: when, on which connection, which bytes."""

    async def main() -> str:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        rng = loop.rng
        net = SimNetwork()
        hosts = [
            net.add_host(f"10.0.0.{i}", up=rng.choice([1e5, 1e6, 1e7]), down=rng.choice([1e6, 1e7, None]),
                         latency=rng.uniform(0.001, 0.1))
            for i in range(1, 7)
        ]
        trace = hashlib.sha256()

        def record(*fields: object, data: bytes = b"") -> None:
            trace.update(repr(fields).encode())
            trace.update(data)

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(rng.randint(1, 1 << 16)):
                record(now(), writer.get_extra_info("sockname"), writer.get_extra_info("peername"), data=data)
                writer.write(data)
                await writer.drain()
            writer.close()

        for h in hosts:
            await h.network.listen(echo, "0.0.0.0", 6881)

        async def client(src: SimHost, dst: SimHost, size: int) -> None:
            await asyncio.sleep(rng.uniform(0, 1))
            reader, writer = await src.network.connect(dst.ip, 6881)
            payload = make_payload(size, seed=size)
            writer.write(payload)
            echoed = bytearray()
            while len(echoed) < size:
                data = await reader.read(1 << 16)
                record(now(), writer.get_extra_info("sockname"), data=data)
                echoed += data
            assert echoed == payload
            writer.close()

        await asyncio.gather(
            *(client(rng.choice(hosts), rng.choice(hosts), rng.randint(1, 1_000_000)) for _ in range(12))
        )
        await asyncio.sleep(1)  # the last ends of stream arrive
        assert all(h.connections == 0 for h in hosts)
        record(now(), [(h.bytes_up, h.bytes_down) for h in hosts])
        return trace.hexdigest()

    return run_virtual(main(), seed=seed)


def test_same_seed_same_events() -> None:
    assert swarm_trace(1) == swarm_trace(1)
    assert swarm_trace(1) != swarm_trace(2)  # the trace does see what the seed changes


# -- MemoryStorage -----------------------------------------------------------------------

PIECE = 16384


def test_metainfo_for_bytes_matches_a_torrent_made_from_a_file(tmp_path: Path) -> None:
    data = make_payload(5 * PIECE + 100, seed=1)
    path = tmp_path / "ds.zip"
    path.write_bytes(data)
    made = create_torrent(path, piece_length=PIECE, creation_date=None)
    assert metainfo_for_bytes("ds.zip", data, PIECE).info_hash == made.info_hash


def test_a_seeders_pieces_are_checked() -> None:
    data = make_payload(10 * PIECE + 5, seed=2)
    meta = metainfo_for_bytes("ds.zip", data, PIECE)
    assert MemoryStorage(meta, payload=data).check() == bytearray([1] * 11)
    corrupt = bytearray(data)
    corrupt[3 * PIECE + 7] ^= 0xFF
    assert MemoryStorage(meta, payload=bytes(corrupt)).check() == bytearray([1, 1, 1, 0] + [1] * 7)
    assert MemoryStorage(meta).check() == bytearray(11)
    assert MemoryStorage(meta).check(trusted={2}) == bytearray([0, 0, 1] + [0] * 8)


def test_a_bad_piece_is_rejected_and_good_ones_kept_byte_exact() -> None:
    data = make_payload(4 * PIECE + 1000, seed=3)
    meta = metainfo_for_bytes("ds.zip", data, PIECE)
    store = MemoryStorage(meta)
    pieces = [data[i : i + PIECE] for i in range(0, len(data), PIECE)]
    bad = bytearray(pieces[1])
    bad[0] ^= 1
    assert not store.write_piece_if_valid(1, bad)
    assert not store.write_piece_if_valid(1, memoryview(pieces[2]))  # another piece's data
    with pytest.raises(StorageError):
        store.read_block(1, 0, 100)
    assert store.check() == bytearray(5)
    for i in (4, 0, 2, 1, 3):
        assert store.write_piece_if_valid(i, bytearray(pieces[i]))
    assert store.check() == bytearray([1] * 5)
    assert store.read_block(4, 200, 800) == pieces[4][200:1000]
    with pytest.raises(StorageError):
        store.read_block(4, 900, 200)  # past the short last piece
    assert store.content() == data
    assert store.file_stamps() == [None]
    store.delete_files()
    assert store.check() == bytearray(5)


def test_content_has_zeros_where_pieces_are_missing() -> None:
    data = make_payload(3 * PIECE, seed=4)
    meta = metainfo_for_bytes("ds.zip", data, PIECE)
    store = MemoryStorage(meta)
    store.write_piece_if_valid(1, bytearray(data[PIECE : 2 * PIECE]))
    assert store.content() == bytes(PIECE) + data[PIECE : 2 * PIECE] + bytes(PIECE)


def test_storages_of_one_torrent_share_the_pool() -> None:
    # Pieces 0 and 2 are identical: one pool entry serves both.
    unique = [make_payload(PIECE, seed=s) for s in (10, 11, 12)]
    data = unique[0] + unique[1] + unique[0] + unique[2]
    meta = metainfo_for_bytes("ds.zip", data, PIECE)
    pool: dict[bytes, bytes] = {}
    seeder = MemoryStorage(meta, pool=pool, payload=data)
    leecher = MemoryStorage(meta, pool=pool)
    for i in range(4):
        assert leecher.write_piece_if_valid(i, bytearray(seeder.read_block(i, 0, PIECE)))
    assert len(pool) == 3
    assert sorted(pool) == sorted(hashlib.sha1(u).digest() for u in unique)
    assert leecher.content() == seeder.content() == data
    leecher.delete_files()
    assert seeder.check() == bytearray([1] * 4)
