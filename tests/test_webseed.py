"""Web seeds (BEP 19) as a downloader: runs of whole pieces from the picker, then real HTTP servers
on loopback (aiohttp's static files, which answer range requests, and a handler of ours that
misbehaves on purpose), real files, our own seeding session as a peer, and libtorrent as a leecher
of a torrent we made."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from pyowtorrent.engine.events import PieceFailed, PieceVerified, TorrentEvent, TorrentState, WebSeedStatus
from pyowtorrent.engine.session import Session
from pyowtorrent.engine.torrent import Torrent
from pyowtorrent.metainfo.bencoding import Bencached, encode
from pyowtorrent.metainfo.layout import BLOCK_SIZE
from pyowtorrent.metainfo.torrent_file import Metainfo, parse_metainfo
from pyowtorrent.storage.create import create_torrent
from pyowtorrent.strategy.picker import Block, PiecePicker, check_invariants

from .engine_util import make_payload, same_tree, until
from .lt_util import lt_make_torrent, lt_session

# -- the picker's runs (sans-IO) ------------------------------------------------------------


def _contiguous(blocks: list[Block], piece_length: int) -> bool:
    starts = [b.index * piece_length + b.begin for b in blocks]
    return all(s + b.length == t for s, b, t in zip(starts, blocks, starts[1:]))


def test_a_run_is_whole_pieces_in_a_row_and_goes_on_from_where_the_last_one_ended() -> None:
    picker = PiecePicker(10, 2 * BLOCK_SIZE, 10 * 2 * BLOCK_SIZE - 100, seed=1)
    run = picker.pick_run("ws", 6, prefer=2)
    assert [(b.index, b.begin) for b in run] == [(i, o) for i in (2, 3, 4) for o in (0, BLOCK_SIZE)]
    rest = picker.pick_run("ws", 100, prefer=5)
    assert [b.index for b in rest] == [5, 5, 6, 6, 7, 7, 8, 8, 9, 9] and rest[-1].length == BLOCK_SIZE - 100
    # What is left goes to a peer; the runs' pieces are the web seed's.
    left = picker.pick("peer", lambda i: True, 4)
    assert {(b.index, b.begin) for b in left} == {(i, o) for i in (0, 1) for o in (0, BLOCK_SIZE)}
    check_invariants(picker)


def test_a_new_run_starts_at_the_start_of_its_gap() -> None:
    picker = PiecePicker(12, BLOCK_SIZE, 12 * BLOCK_SIZE, seed=3)
    picker.we_have(3)
    picker.we_have(8)
    starts = []
    while run := picker.pick_run("ws", 2):
        starts.append(run[0].index)
    assert sorted(starts) == [0, 2, 4, 6, 9, 11]  # gaps 0-2, 4-7, 9-11 filled from their starts
    check_invariants(picker)


def test_a_run_stops_at_a_piece_someone_else_has_started() -> None:
    picker = PiecePicker(8, BLOCK_SIZE, 8 * BLOCK_SIZE, seed=1)
    picker.pick("peer", lambda i: i == 4, 1)
    assert [b.index for b in picker.pick_run("ws", 100, prefer=1)] == [1, 2, 3]
    check_invariants(picker)


def test_a_run_given_up_midway_is_taken_up_again_from_its_first_missing_block() -> None:
    picker = PiecePicker(4, 4 * BLOCK_SIZE, 16 * BLOCK_SIZE, seed=1)
    run = picker.pick_run("ws1", 8, prefer=0)
    for b in run[:3]:
        picker.on_block_received("ws1", b)
    picker.on_peer_gone("ws1")  # it failed after three blocks
    again = picker.pick_run("ws2", 100, prefer=3)
    assert [(b.index, b.begin // BLOCK_SIZE) for b in again] == [(0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (2, 0),
                                                                  (2, 1), (2, 2), (2, 3), (3, 0), (3, 1), (3, 2),
                                                                  (3, 3)]
    check_invariants(picker)


def test_in_end_game_a_run_takes_blocks_a_peer_has_out_and_the_peer_gets_a_cancel() -> None:
    picker = PiecePicker(2, 2 * BLOCK_SIZE, 4 * BLOCK_SIZE, seed=1)
    slow = picker.pick("slow peer", lambda i: True, 4)
    assert len(slow) == 4 and picker.in_endgame()
    first, second = picker.pick_run("ws", 100), picker.pick_run("ws", 100)
    assert set(first + second) == set(slow) and first[0].index != second[0].index  # a piece a run
    assert picker.pick_run("ws", 100) == []  # nothing it has not asked for
    done, cancel = picker.on_block_received("ws", first[0])
    assert cancel == ["slow peer"] and not done
    check_invariants(picker)


@dataclass
class _Source:
    name: str
    web: bool
    has: bytearray
    queue: list[Block] = field(default_factory=list)


def _simulate(seed: int, num_pieces: int, blocks_per_piece: int, n_peers: int, n_web: int) -> None:
    """Peers and web seeds share a download; a web seed's blocks come in order and a run may end early."""
    rng = random.Random(seed)
    plen = blocks_per_piece * BLOCK_SIZE
    total = plen * num_pieces - rng.randrange(BLOCK_SIZE)
    picker = PiecePicker(num_pieces, plen, total, seed=seed)
    sources = [_Source(f"w{i}", True, bytearray([1]) * num_pieces) for i in range(n_web)]
    for i in range(n_peers):
        s = _Source(f"p{i}", False, bytearray(rng.random() < 0.7 for _ in range(num_pieces)))
        picker.peer_bitfield(s.has)
        sources.append(s)
    out: dict[Block, set[str]] = {}
    for _ in range(20_000):
        if picker.is_finished():
            break
        for s in sources:
            r = rng.random()
            if r < 0.3 and not (s.web and s.queue):
                got = picker.pick_run(s.name, rng.randint(1, 3 * blocks_per_piece), rng.choice([None, 0, num_pieces // 2])) \
                    if s.web else picker.pick(s.name, s.has, rng.randint(1, 6))
                if s.web:
                    assert _contiguous(got, plen), got
                for b in got:
                    holders = out.setdefault(b, set())
                    assert not holders or picker.in_endgame(), f"{b} given to {s.name} and {holders} outside end-game"
                    holders.add(s.name)
                s.queue += got
            elif r < 0.8 and s.queue:
                # a web seed delivers in order; a peer in any order
                for _ in range(rng.randint(1, len(s.queue))):
                    b = s.queue.pop(0 if s.web else rng.randrange(len(s.queue)))
                    out[b].discard(s.name)
                    done, _cancel = picker.on_block_received(s.name, b)
                    if done:
                        picker.on_piece_passed(b.index)
            elif r < 0.85 and s.queue:
                picker.on_peer_gone(s.name)  # a failed request (web seed) or a lost connection
                for b in s.queue:
                    out[b].discard(s.name)
                s.queue.clear()
        if rng.random() < 0.1:
            check_invariants(picker)
    assert picker.is_finished()
    check_invariants(picker)


@pytest.mark.parametrize("seed", range(4))
def test_web_seeds_and_peers_share_a_download_and_no_block_is_asked_twice_outside_end_game(seed: int) -> None:
    _simulate(seed, num_pieces=30, blocks_per_piece=3, n_peers=3, n_web=2)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 30), st.integers(1, 4), st.integers(0, 3), st.integers(1, 3))
def test_any_mix_of_web_seeds_and_peers_completes(seed: int, pieces: int, bpp: int, peers: int, web: int) -> None:
    _simulate(seed, pieces, bpp, peers, web)


# -- HTTP servers on loopback -------------------------------------------------------------------


@dataclass
class Hits:
    """What a server (or several) was asked: each request's path and range, and the most at once."""

    requests: list[tuple[str, str | None]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0


def _counting(hits: Hits) -> Any:
    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        hits.requests.append((request.path, request.headers.get("Range")))
        hits.in_flight += 1
        hits.most_in_flight = max(hits.most_in_flight, hits.in_flight)
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            hits.in_flight -= 1

    return count


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """``app`` on a free loopback port; gives its base URL, ``http://127.0.0.1:PORT/``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


def static_app(root: Path, hits: Hits) -> web.Application:
    """A plain HTTP server of the files under ``root`` (aiohttp's static files answer ranges)."""
    app = web.Application(middlewares=[_counting(hits)])
    app.router.add_static("/", root)
    return app


_RANGE = re.compile(r"bytes=([0-9]+)-([0-9]+)")


RELEASE = web.AppKey("release", asyncio.Event)


def ranges_app(root: Path, hits: Hits, mode: str = "good", gate: asyncio.Event | None = None) -> web.Application:
    """A server of ours that answers range requests the way ``mode`` says (``good``: properly).

    Bodies are written inside the handler, so ``Hits.in_flight`` counts requests until their
    last byte.  ``gate``: answers wait until it is set.  A ``stall`` waits for ``app[RELEASE]``.
    """
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        if gate is not None:
            await gate.wait()
        if mode == "status":
            return web.Response(status=503, text="busy")
        if mode == "redirect":
            raise web.HTTPFound(request.path)  # to itself, for ever
        data = (root / request.match_info["path"]).read_bytes()
        m = _RANGE.fullmatch(request.headers.get("Range", ""))
        if mode == "full200" or m is None:
            return web.Response(body=data)
        first, last = int(m[1]), int(m[2])
        body = data[first : last + 1]
        headers = {"Content-Range": f"bytes {first}-{last}/{len(data)}"}
        if mode == "wrong_range":
            headers["Content-Range"] = f"bytes {first + 1}-{last + 1}/{len(data)}"
            body = data[first + 1 : last + 2]
        elif mode == "long":
            body += b"!"
        elif mode == "corrupt":
            body = body[: len(body) // 2] + bytes([body[len(body) // 2] ^ 1]) + body[len(body) // 2 + 1 :]
        resp = web.StreamResponse(status=206, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        if mode in ("stall", "short"):
            await resp.write(body[: len(body) // 2])
            if mode == "short":
                assert request.transport is not None
                request.transport.abort()  # the server goes away mid-body
                return resp
            await release.wait()  # until the test ends
            return resp
        await resp.write(body)
        await resp.write_eof()
        return resp

    app = web.Application(middlewares=[_counting(hits)])
    app.router.add_get("/{path:.+}", handle)
    app[RELEASE] = release
    app.on_shutdown.append(lambda _app: _set(release))
    return app


async def _set(event: asyncio.Event) -> None:
    event.set()


def with_web_seeds(meta: Metainfo, urls: list[str]) -> Metainfo:
    """The same torrent (same info-hash) with ``url-list`` set to ``urls``."""
    top = {**meta.raw_top, b"url-list": [u.encode() for u in urls], b"info": Bencached(meta.info_bytes)}
    return parse_metainfo(encode(top))


def session(**kw: Any) -> Session:
    # Short retry and stall times: failures come and go within the test.
    kw.setdefault("reconnect_delay", 0.05)
    kw.setdefault("request_timeout", 2.0)
    return Session(listen="127.0.0.1", **kw)


def seeds_of(t: Torrent) -> dict[str, WebSeedStatus]:
    return {w.url: w for w in t.status().web_seeds}


MULTI = {"a b#?.bin": 100_003, "sub/é x.dat": 70_001, "tiny": 5, "empty": 0, "z/last.bin": 600_000}


# -- downloads from web seeds -----------------------------------------------------------------


@pytest.mark.parametrize("url_names", ["the file", "its directory"])
def test_a_single_file_torrent_from_a_web_seed_alone_is_byte_exact(tmp_path: Path, url_names: str) -> None:
    root = tmp_path / "www"
    make_payload(root, {"one file.bin": 300_001})

    async def main() -> None:
        hits = Hits()
        async with serve(static_app(root, hits)) as base, session() as s:
            url = base + "one%20file.bin" if url_names == "the file" else base
            meta = create_torrent(root / "one file.bin", piece_length=16384, web_seeds=[url])
            t = await s.add_torrent(meta, tmp_path / "dl")
            await t.wait_done(timeout=30)
            (seed,) = t.status().web_seeds
            assert seed.working and seed.downloaded == meta.total_length and seed.failures == 0
            assert t.status().num_peers == 0
        assert {p for p, _ in hits.requests} == {"/one file.bin"}
        # Several pieces a request: 300 kB in 256 KiB runs, never a block at a time.
        assert 2 <= len(hits.requests) <= 3

    asyncio.run(main())
    assert (tmp_path / "dl" / "one file.bin").read_bytes() == (root / "one file.bin").read_bytes()


def test_a_multi_file_torrent_from_a_web_seed_alone_is_byte_exact(tmp_path: Path) -> None:
    root = tmp_path / "www" / "pub"
    make_payload(root / "ds", MULTI)

    async def main() -> None:
        hits = Hits()
        async with serve(static_app(tmp_path / "www", hits)) as base, session() as s:
            meta = create_torrent(root / "ds", piece_length=16384, web_seeds=[base + "pub/"])
            assert meta.num_pieces == 47 and meta.web_seeds == (base + "pub/",)
            t = await s.add_torrent(meta, tmp_path / "dl")
            await t.wait_done(timeout=30)
            assert seeds_of(t)[base + "pub/"].downloaded == meta.total_length
        paths = Counter(p for p, _ in hits.requests)
        assert set(paths) == {"/pub/ds/a b#?.bin", "/pub/ds/sub/é x.dat", "/pub/ds/tiny", "/pub/ds/z/last.bin"}
        # 770 kB in three runs of 256 KiB, each one request per file it touches (four in the first).
        assert len(hits.requests) == 6

    asyncio.run(main())
    assert same_tree(root / "ds", tmp_path / "dl" / "ds")


def test_pad_files_are_zeros_never_asked_for(tmp_path: Path) -> None:
    # libtorrent's hybrid torrents align files to pieces with BEP 47 pad files.
    root = tmp_path / "www"
    make_payload(root / "ds", {"a.bin": 40_000, "b.bin": 50_001, "c.bin": 1})

    async def main() -> None:
        hits = Hits()
        async with serve(static_app(root, hits)) as base, session() as s:
            meta = with_web_seeds(parse_metainfo(lt_make_torrent(root / "ds", 16384, 0)), [base])
            assert any(f.pad for f in meta.files)
            t = await s.add_torrent(meta, tmp_path / "dl")
            await t.wait_done(timeout=30)
        assert {p for p, _ in hits.requests} == {"/ds/a.bin", "/ds/b.bin", "/ds/c.bin"}

    asyncio.run(main())
    assert same_tree(root / "ds", tmp_path / "dl" / "ds")


def test_two_web_seeds_at_once_are_both_used(tmp_path: Path) -> None:
    root = tmp_path / "www"
    make_payload(root / "ds", MULTI)

    async def main() -> None:
        one, two = Hits(), Hits()
        async with serve(static_app(root, one)) as a, serve(static_app(root, two)) as b, session() as s:
            meta = create_torrent(root / "ds", piece_length=16384, web_seeds=[a, b, "ftp://files.example/"])
            t = await s.add_torrent(meta, tmp_path / "dl")
            await t.wait_done(timeout=30)
            st = seeds_of(t)
            assert st[a].downloaded > 0 and st[b].downloaded > 0
            assert st[a].downloaded + st[b].downloaded == meta.total_length  # no block twice
            ftp = st["ftp://files.example/"]
            assert ftp.dropped and ftp.last_error == "not an http(s) URL" and ftp.downloaded == 0
        assert one.requests and two.requests

    asyncio.run(main())
    assert same_tree(root / "ds", tmp_path / "dl" / "ds")


def test_a_web_seed_beside_a_peer(tmp_path: Path) -> None:
    seeder_dir = tmp_path / "seeder"
    make_payload(seeder_dir / "ds", {"a.bin": 2_000_000, "b b.bin": 1_000_003})

    async def main() -> None:
        hits, gate = Hits(), asyncio.Event()
        async with serve(ranges_app(seeder_dir, hits, gate=gate)) as base, session() as s1, session() as s2:
            meta = create_torrent(seeder_dir / "ds", piece_length=16384, web_seeds=[base])
            await s1.add_torrent(meta, seeder_dir)
            t = await s2.add_torrent(meta, tmp_path / "dl", peers=[("127.0.0.1", s1.listen_port)])
            # The web seed's answers wait until a piece came from the peer: both must give some.
            first_from_peer: list[int] = []

            def on_event(e: TorrentEvent) -> None:
                if isinstance(e, PieceVerified) and not gate.is_set():
                    first_from_peer.append(t.downloaded_bytes)
                    gate.set()

            t.add_listener(on_event)
            await t.wait_done(timeout=30)
            (seed,) = t.status().web_seeds
            assert first_from_peer and first_from_peer[0] > 0 and hits.requests
            assert seed.downloaded > 0 and seed.failures == 0
            assert t.downloaded_bytes - seed.downloaded > 0  # the peer's share

    asyncio.run(main())
    assert same_tree(seeder_dir / "ds", tmp_path / "dl" / "ds")


def test_a_web_seed_counts_against_the_torrents_connection_cap(tmp_path: Path) -> None:
    root = tmp_path / "www"
    make_payload(root, {"f.bin": 900_000})

    async def main() -> None:
        hits = Hits()  # both servers count into one: the most requests at once, across them
        async with serve(ranges_app(root, hits)) as a, serve(ranges_app(root, hits)) as b:
            async with session(max_connections_per_torrent=1) as s:
                meta = create_torrent(root / "f.bin", piece_length=16384, web_seeds=[a + "f.bin", b + "f.bin"])
                t = await s.add_torrent(meta, tmp_path / "dl")
                await t.wait_done(timeout=30)
        assert len(hits.requests) >= 4 and hits.most_in_flight == 1

    asyncio.run(main())
    assert (tmp_path / "dl" / "f.bin").read_bytes() == (root / "f.bin").read_bytes()


def test_pause_mid_request_then_resume_completes(tmp_path: Path) -> None:
    root = tmp_path / "www"
    make_payload(root, {"f.bin": 600_000})

    async def main() -> None:
        hits, gate = Hits(), asyncio.Event()
        async with serve(ranges_app(root, hits, gate=gate)) as base, session() as s:
            meta = create_torrent(root / "f.bin", piece_length=16384, web_seeds=[base + "f.bin"])
            t = await s.add_torrent(meta, tmp_path / "dl")
            await until(lambda: bool(hits.requests), what="a request")
            t.pause()
            assert t.status().state is TorrentState.PAUSED
            gate.set()
            t.resume()
            await t.wait_done(timeout=30)
            assert t.status().web_seeds[0].failures == 0

    asyncio.run(main())
    assert (tmp_path / "dl" / "f.bin").read_bytes() == (root / "f.bin").read_bytes()


# -- web seeds that misbehave -------------------------------------------------------------------

FAILURES = {
    "status": "HTTP 503 Service Unavailable",
    "wrong_range": "asked for bytes",
    "long": "a body of",
    "short": "ClientPayloadError",
    "full200": "200 with the whole file to a range request",
    "redirect": "more than 5 redirects",
    "corrupt": "piece ",  # 'piece N failed its hash check', or 'banned: ...' once smart ban has proof
}


@pytest.mark.parametrize("mode", FAILURES)
def test_a_misbehaving_web_seed_beside_a_good_one(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "www"
    make_payload(root, {"f.bin": 600_001})

    async def main() -> None:
        bad_hits, good_hits = Hits(), Hits()
        events: list[TorrentEvent] = []
        bad_app = ranges_app(root, bad_hits, mode)
        async with serve(bad_app) as bad, serve(static_app(root, good_hits)) as good:
            async with session() as s:
                # The bad one first: it gets the first run, so it is surely asked.
                meta = create_torrent(root / "f.bin", piece_length=16384, web_seeds=[bad + "f.bin", good + "f.bin"])
                t = await s.add_torrent(meta, tmp_path / "dl")
                t.add_listener(events.append)
                await t.wait_done(timeout=30)
                st = seeds_of(t)
                b, g = st[bad + "f.bin"], st[good + "f.bin"]
                assert b.failures >= 1 and b.last_error is not None and FAILURES[mode] in b.last_error, b
                assert not b.working
                assert g.working and g.failures == 0 and g.downloaded > 0
                if mode == "corrupt":
                    assert any(isinstance(e, PieceFailed) for e in events)
                else:
                    assert b.downloaded == 0 or mode == "short"  # what came before the failure counts
                bad_app[RELEASE].set()
        assert bad_hits.requests and good_hits.requests

    asyncio.run(main())
    assert (tmp_path / "dl" / "f.bin").read_bytes() == (root / "f.bin").read_bytes()


def test_a_stalled_web_seed_times_out_and_its_blocks_go_to_a_peer(tmp_path: Path) -> None:
    seeder_dir = tmp_path / "seeder"
    make_payload(seeder_dir, {"f.bin": 600_001})

    async def main() -> None:
        hits = Hits()
        stalling = ranges_app(seeder_dir, hits, "stall")
        async with serve(stalling) as base, session(request_timeout=0.5) as s1, session(request_timeout=0.5) as s2:
            meta = create_torrent(seeder_dir / "f.bin", piece_length=16384, web_seeds=[base + "f.bin"])
            await s1.add_torrent(meta, seeder_dir)
            t = await s2.add_torrent(meta, tmp_path / "dl")
            # Half a run comes, then nothing: the request ends after request_timeout.
            await until(lambda: t.status().web_seeds[0].failures >= 1, what="the stall to time out")
            (seed,) = t.status().web_seeds
            assert seed.last_error == "no answer for 0.5 s" and not seed.working and 0 < seed.downloaded < meta.total_length
            t.add_peer("127.0.0.1", s1.listen_port)
            await t.wait_done(timeout=30)
            stalling[RELEASE].set()

    asyncio.run(main())
    assert (tmp_path / "dl" / "f.bin").read_bytes() == (seeder_dir / "f.bin").read_bytes()


def test_a_corrupting_web_seed_beside_a_peer(tmp_path: Path) -> None:
    seeder_dir = tmp_path / "seeder"
    make_payload(seeder_dir, {"f.bin": 600_001})

    async def main() -> None:
        hits = Hits()
        async with serve(ranges_app(seeder_dir, hits, "corrupt")) as base, session() as s1, session() as s2:
            meta = create_torrent(seeder_dir / "f.bin", piece_length=16384, web_seeds=[base + "f.bin"])
            await s1.add_torrent(meta, seeder_dir)
            t = await s2.add_torrent(meta, tmp_path / "dl", peers=[("127.0.0.1", s1.listen_port)])
            await t.wait_done(timeout=30)
            (seed,) = t.status().web_seeds
            assert seed.failures >= 1 and seed.last_error is not None and not seed.working
            assert not t.banned_peers  # the web seed is blamed, not the peer

    asyncio.run(main())
    assert (tmp_path / "dl" / "f.bin").read_bytes() == (seeder_dir / "f.bin").read_bytes()


def test_corrupt_bytes_from_the_only_source_never_reach_the_disk(tmp_path: Path) -> None:
    good = tmp_path / "good"
    make_payload(good, {"f.bin": 300_000})
    served = tmp_path / "www"
    served.mkdir()
    data = bytearray((good / "f.bin").read_bytes())
    bad_piece = 7
    data[bad_piece * 16384 + 100] ^= 0xFF  # the server's copy differs from the torrent in one byte
    (served / "f.bin").write_bytes(data)

    async def main() -> None:
        hits = Hits()
        events: list[TorrentEvent] = []
        async with serve(static_app(served, hits)) as base, session() as s:
            meta = create_torrent(good / "f.bin", piece_length=16384, web_seeds=[base + "f.bin"])
            t = await s.add_torrent(meta, tmp_path / "dl")
            t.add_listener(events.append)
            await until(lambda: t.status().web_seeds[0].dropped, what="the web seed to be dropped")
            (seed,) = t.status().web_seeds
            assert seed.last_error is not None and seed.last_error.startswith("banned:"), seed
            assert not t.have_piece(bad_piece) and t.status().state is TorrentState.DOWNLOADING
            failed = [e.piece for e in events if isinstance(e, PieceFailed)]
            assert set(failed) == {bad_piece} and len(failed) >= 2
            assert bad_piece not in [e.piece for e in events if isinstance(e, PieceVerified)]
            web_seed = t.swarm.web_seeds.seeds[0]
            await until(lambda: web_seed.task is None, what="its task to end")
            t.swarm.connect_more()  # what the torrent's tick does: a dropped web seed is not started again
            assert web_seed.task is None
        on_disk = (tmp_path / "dl" / "f.bin").read_bytes()
        piece = slice(bad_piece * 16384, (bad_piece + 1) * 16384)
        assert on_disk[piece] != bytes(data[piece])  # the bad piece was never written

    asyncio.run(main())


# -- libtorrent, fed by the web seed alone --------------------------------------------------------


def test_libtorrent_downloads_our_torrent_from_its_web_seed_alone(tmp_path: Path) -> None:
    root = tmp_path / "www"
    make_payload(root / "ds", MULTI)

    async def main() -> None:
        hits = Hits()
        async with serve(static_app(root, hits)) as base:
            meta = create_torrent(root / "ds", piece_length=16384, web_seeds=[base])
            import libtorrent as lt

            ses = lt_session()
            params = lt.add_torrent_params()
            params.ti = lt.torrent_info(meta.to_bytes())
            params.save_path = str(tmp_path / "lt")
            handle = ses.add_torrent(params)
            try:
                await until(lambda: handle.status().is_seeding, timeout=60, what="libtorrent to finish")
            finally:
                ses.remove_torrent(handle)
        assert hits.requests

    asyncio.run(main())
    assert same_tree(root / "ds", tmp_path / "lt" / "ds")


def lt_web_seeds(torrent: bytes) -> list[str]:
    import libtorrent as lt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # web_seeds(): still there in 2.1
        return [w["url"] for w in lt.torrent_info(torrent).web_seeds()]


def test_create_writes_each_web_seed_and_libtorrent_reads_them(tmp_path: Path) -> None:
    payload = tmp_path / "data.zip"
    payload.write_bytes(random.Random(3).randbytes(40_000))
    urls = ["http://mirror-a.example/data.zip", "https://mirror-b.example/pub/"]
    meta = create_torrent(payload, piece_length=16384, web_seeds=urls)
    assert list(meta.web_seeds) == urls
    assert lt_web_seeds(meta.to_bytes()) == urls
    out = tmp_path / "cli.torrent"
    r = subprocess.run(
        [sys.executable, "-m", "pyowtorrent", "create", str(payload), "-o", str(out), "--piece-length", "16k",
         "--web-seed", urls[0], "--web-seed", urls[1]],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
    )
    assert r.returncode == 0, r.stderr
    assert list(parse_metainfo(out.read_bytes()).web_seeds) == urls
    assert lt_web_seeds(out.read_bytes()) == urls
