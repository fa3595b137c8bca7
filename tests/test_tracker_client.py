"""Tracker clients and the BEP 12 policy: tiers, bad trackers, UDP over IPv6, events reaching the tracker."""

from __future__ import annotations

import asyncio
import random
import re
import socket
import struct
from pathlib import Path

from aiohttp import web

from pyowtorrent.errors import TrackerError
from pyowtorrent.engine.events import TorrentState
from pyowtorrent.engine.session import Session
from pyowtorrent.engine.http_client import HttpClient
from pyowtorrent.engine.trackers import UdpTracker
from pyowtorrent.tracker.http_codec import AnnounceRequest
from pyowtorrent.service.tracker import Tracker
from pyowtorrent.tracker.tiers import TrackerTiers

from .engine_util import same_tree, until
from .test_trackers import torrent_with


def test_tiers_are_shuffled_once_and_a_tracker_that_answers_moves_to_the_front() -> None:
    tiers = TrackerTiers([["a", "b", "c", "d"], ["e"]], random.Random(7))
    order = [e.url for e in tiers.candidates(0.0)]
    assert sorted(order[:4]) == ["a", "b", "c", "d"] and order[4] == "e"
    assert order[:4] != ["a", "b", "c", "d"]  # shuffled (this seed)
    assert [e.url for e in tiers.candidates(0.0)] == order  # ...once, not on every call
    third = next(e for e in tiers.entries if e.url == order[2])
    tiers.succeeded(third, now=100.0, interval=900, min_interval=60)
    assert [e.url for e in tiers.candidates(0.0)][0] == order[2]
    assert third.next_announce == 1000.0 and third.min_interval == 60
    assert tiers.next_wakeup() == 1000.0


def test_a_failing_tracker_backs_off_and_the_next_tier_is_tried() -> None:
    tiers = TrackerTiers([["dead"], ["alive"]], random.Random(1))
    dead, alive = tiers.entries
    tiers.failed(dead, now=10.0, error="refused")
    assert dead.last_error == "refused" and dead.next_announce == 70.0
    assert [e.url for e in tiers.candidates(20.0)] == ["alive"]  # backing off: skipped
    assert [e.url for e in tiers.candidates(70.0)] == ["dead", "alive"]  # retried in order later
    tiers.failed(dead, now=70.0, error="refused")
    assert dead.next_announce == 70.0 + 120.0  # doubled


def _request(info_hash: bytes = b"i" * 20) -> AnnounceRequest:
    return AnnounceRequest(info_hash, b"p" * 20, 6881, 0, 0, 100, "started", 50, 1)


class _FakeUdpTracker(asyncio.DatagramProtocol):
    """A BEP 15 tracker on a datagram socket, scripted per test (responses built with struct)."""

    def __init__(self, behaviour: str, peers6: list[tuple[str, int]] = ()) -> None:  # type: ignore[assignment]
        self.behaviour = behaviour
        self.peers6 = peers6
        self.transport: asyncio.DatagramTransport | None = None
        self.requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.requests += 1
        action, tid = struct.unpack_from(">II", data, 8)
        if self.behaviour == "wrong-transaction":
            self.transport.sendto(struct.pack(">IIQ", 0, tid ^ 1, 42), addr)
            return
        if self.behaviour == "truncated":
            self.transport.sendto(struct.pack(">II", action, tid) + b"\x00\x01", addr)
            return
        if self.behaviour == "error":
            self.transport.sendto(struct.pack(">II", 3, tid) + b"go away", addr)
            return
        if action == 0:
            self.transport.sendto(struct.pack(">IIQ", 0, tid, 0x1234), addr)
        elif action == 1:
            body = b"".join(socket.inet_pton(socket.AF_INET6, h) + struct.pack(">H", p) for h, p in self.peers6)
            self.transport.sendto(struct.pack(">IIiii", 1, tid, 1800, 0, len(self.peers6)) + body, addr)


async def _udp_tracker(behaviour: str, host: str = "127.0.0.1", peers6: list[tuple[str, int]] = []) -> tuple[asyncio.DatagramTransport, _FakeUdpTracker, int]:  # noqa: B006
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: _FakeUdpTracker(behaviour, peers6), local_addr=(host, 0))
    return transport, proto, transport.get_extra_info("sockname")[1]


def test_hostile_udp_answers_are_tracker_errors() -> None:
    async def main() -> None:
        for behaviour, message in [("wrong-transaction", "no answer"), ("truncated", "UDP"), ("error", "go away")]:
            transport, proto, port = await _udp_tracker(behaviour)
            try:
                client = UdpTracker(f"udp://127.0.0.1:{port}/announce", retransmit_base=0.05, max_tries=2)
                try:
                    await client.announce(_request())
                except TrackerError as exc:
                    assert message in str(exc), (behaviour, str(exc))
                else:
                    raise AssertionError(f"{behaviour}: no error")
            finally:
                transport.close()

    asyncio.run(main())


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on a free loopback port: the runner (to clean up) and the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def test_hostile_http_answers_are_recorded_on_the_tracker_and_the_torrent_goes_on(tmp_path: Path) -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(body=b"d8:intervali1800e5:peers" + b"9" * 5000)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/announce", garbage)
        runner, port = await _serve(app)
        try:
            async with Tracker() as good:
                meta, seed_dir = torrent_with(tmp_path, [[f"http://127.0.0.1:{port}/announce"], [good.announce_url("127.0.0.1")]])
                async with Session(listen="127.0.0.1") as s1, Session(listen="127.0.0.1") as s2:
                    await s1.add_torrent(meta, seed_dir)
                    await until(lambda: bool(good.peers(meta.info_hash)), what="the seeder's announce")
                    t = await s2.add_torrent(meta, tmp_path / "leech")
                    await t.wait_done(timeout=30)
                    bad, ok = t.status().trackers
                    assert bad.last_error and not bad.working
                    assert ok.working
        finally:
            await runner.cleanup()

    asyncio.run(main())
    assert same_tree(tmp_path / "seeder" / "ds", tmp_path / "leech" / "ds")


def test_udp_tracker_over_ipv6_gives_peers6(tmp_path: Path) -> None:
    async def main() -> None:
        meta, seed_dir = torrent_with(tmp_path, [])
        async with Session(listen="::1") as seeder_s:
            await seeder_s.add_torrent(meta, seed_dir)
            transport, proto, port = await _udp_tracker("ok", "::1", [("::1", seeder_s.listen_port)])
            try:
                async with Session(listen="::1", udp_retransmit_base=0.2) as s:
                    t = await s.add_torrent(meta, tmp_path / "leech", trackers=[[f"udp://[::1]:{port}/announce"]])
                    await t.wait_done(timeout=30)
                    (tr,) = t.status().trackers
                    assert tr.working and tr.peers_received == 1 and tr.seeders == 1
            finally:
                transport.close()

    asyncio.run(main())
    assert same_tree(tmp_path / "seeder" / "ds", tmp_path / "leech" / "ds")


def test_started_completed_and_stopped_reach_the_tracker(tmp_path: Path) -> None:
    async def main() -> None:
        async with Tracker() as tracker:
            meta, seed_dir = torrent_with(tmp_path, [tracker.announce_url("127.0.0.1")])
            async with Session(listen="127.0.0.1") as s1:
                await s1.add_torrent(meta, seed_dir)
                await until(lambda: len(tracker.peers(meta.info_hash)) == 1, what="started from the seeder")
                async with Session(listen="127.0.0.1") as s2:
                    t = await s2.add_torrent(meta, tmp_path / "leech")
                    await t.wait_done(timeout=30)
                    # 'completed': the leecher's left reaches 0 at the tracker.
                    await until(
                        lambda: all(p.left == 0 for p in tracker.peers(meta.info_hash))
                        and len(tracker.peers(meta.info_hash)) == 2,
                        what="the completed announce",
                    )
                # 'stopped' when the leecher's session closed.
                assert len(tracker.peers(meta.info_hash)) == 1

    asyncio.run(main())


def test_stopped_reaches_the_tracker_when_a_paused_torrent_is_closed(tmp_path: Path) -> None:
    """pause() sends 'stopped'; closing the session right after must not cancel it."""

    async def main() -> None:
        async with Tracker() as tracker:
            meta, seed_dir = torrent_with(tmp_path, [tracker.announce_url("127.0.0.1")])
            async with Session(listen="127.0.0.1") as s:
                t = await s.add_torrent(meta, seed_dir)
                await until(lambda: len(tracker.peers(meta.info_hash)) == 1, what="started")
                t.pause()
            assert tracker.peers(meta.info_hash) == []

    asyncio.run(main())


def test_an_unusable_tracker_url_fails_that_tracker_not_the_torrent(tmp_path: Path) -> None:
    """URLs that pass the torrent's rules but cannot be used (a port out of range, a bad bracketed
    host) are a tracker error shown in the status; the torrent seeds on."""
    urls = ["udp://127.0.0.1:99999/announce", "udp://[zz]:80/announce", "http://127.0.0.1:99999/announce"]

    async def main() -> None:
        meta, seed_dir = torrent_with(tmp_path, [])
        async with Session(listen="127.0.0.1", udp_retransmit_base=0.2) as s:
            t = await s.add_torrent(meta, seed_dir, trackers=[[u] for u in urls])
            await until(lambda: all(tr.last_error for tr in t.status().trackers), what="every tracker to fail")
            assert t.state is TorrentState.SEEDING and t.error is None
            assert sorted(tr.url for tr in t.status().trackers) == sorted(urls)

    asyncio.run(main())


def test_http_redirects_and_gzip_are_followed(tmp_path: Path) -> None:
    """A tracker behind a redirect, answering gzip-compressed, still gives its peers."""
    from pyowtorrent.engine.trackers import HttpTracker

    async def main() -> None:
        async with Tracker() as real:
            async def moved(request: web.Request) -> web.Response:
                target = real.announce_url("127.0.0.1") + "?" + request.query_string
                raise web.HTTPFound(target)

            async def gzipped(request: web.Request) -> web.Response:
                resp = web.Response(body=b"d8:intervali900e5:peers6:\x7f\x00\x00\x01\x1a\xe1e")
                resp.enable_compression(web.ContentCoding.gzip)
                return resp

            app = web.Application()
            app.router.add_get("/old/announce", moved)
            app.router.add_get("/gz/announce", gzipped)
            runner, port = await _serve(app)
            try:
                http = HttpClient("test")
                req = _request()
                first = await HttpTracker(f"http://127.0.0.1:{port}/old/announce", http).announce(req)
                assert first.interval >= 30 and first.peers == []  # the real tracker answered
                assert len(real.peers(req.info_hash)) == 1
                zipped = await HttpTracker(f"http://127.0.0.1:{port}/gz/announce", http).announce(req)
                assert zipped.interval == 900 and zipped.peers == [("127.0.0.1", 6881)]
            finally:
                await runner.cleanup()

    asyncio.run(main())


def test_udp_connection_id_is_reused_within_its_lifetime() -> None:
    async def main() -> None:
        transport, proto, port = await _udp_tracker("ok")
        try:
            client = UdpTracker(f"udp://127.0.0.1:{port}/announce", retransmit_base=0.5)
            await client.announce(_request())
            await client.announce(_request())
            assert proto.requests == 3  # connect, announce, announce: no second connect
        finally:
            transport.close()

    asyncio.run(main())


def test_announce_and_scrape_urls_reach_the_wire_byte_for_byte() -> None:
    """What goes on the wire is exactly the URL the codec built: every byte value of an
    info-hash and a peer id arrives %XX-encoded (or unreserved), never re-quoted by the HTTP
    client into a raw ``$``, ``!``, ``:``… (which opentracker refuses)."""
    from urllib.parse import unquote_to_bytes, urlsplit

    from pyowtorrent.engine.trackers import HttpTracker
    from pyowtorrent.tracker.http_codec import announce_url, scrape_request_url

    lines: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines.append(head.split(b"\r\n", 1)[0])
        body = b"d8:intervali1800e5:peers0:e"
        if b"/scrape" in lines[-1]:
            ih = unquote_to_bytes(lines[-1].split(b"info_hash=", 1)[1].split(b" ", 1)[0])
            body = b"d5:filesd20:" + ih + b"d8:completei0e10:incompletei0eeee"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    def target(url: str) -> bytes:
        parts = urlsplit(url)
        return f"GET {parts.path}?{parts.query} HTTP/1.1".encode()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}/announce"
        expected: list[bytes] = []
        try:
            tracker = HttpTracker(base, HttpClient("test"))
            for k in range(13):  # 13 x 20 bytes cover all 256 byte values, in both fields
                info_hash = bytes((20 * k + j) % 256 for j in range(20))
                peer_id = bytes((20 * k + j + 7) % 256 for j in range(20))
                req = AnnounceRequest(info_hash=info_hash, peer_id=peer_id, port=6881, uploaded=0, downloaded=0, left=1)
                await tracker.announce(req)
                expected.append(target(announce_url(base, req)))
                await tracker.scrape(info_hash)
                expected.append(target(scrape_request_url(f"http://127.0.0.1:{port}/scrape", [info_hash])))
        finally:
            server.close()
            await server.wait_closed()
        assert lines == expected
        for line in lines:
            query = line.split(b"?", 1)[1].rsplit(b" ", 1)[0]
            assert re.fullmatch(rb"(?:[A-Za-z0-9._~=&-]|%[0-9A-F]{2})*", query), line

    asyncio.run(main())
