"""Outgoing traffic leaves from the address we listen on, and trackers record that one (issue 12).

With ``--listen ADDR`` a session's announces and peer dials must leave from
ADDR: a tracker records the address an announce comes from and hands it out,
and peers given any other find nobody listening there.  The main test runs
in a network namespace (tests/netns_util.py) whose loopback holds two
addresses: opentracker listens on 10.77.0.1, we on 10.77.0.2.  Left to
itself the kernel sends a connection to 10.77.0.1 from 10.77.0.1 (the test
shows it does), so only binding makes opentracker record 10.77.0.2 — for an
HTTP announce and a UDP one — and makes a dial arrive from it.

The rest run on the host's loopback, where every 127/8 address is local:
``announce_ip`` (BEP 3's ``ip=``, the UDP announce's IPv4 field) on the wire,
the choice of source address per family, and each bound client on its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from pyowtorrent.engine.announcer import announce_options
from pyowtorrent.engine.net import TcpNetwork, source_addresses, source_for
from pyowtorrent.engine.http_client import HttpClient, HttpFailure
from pyowtorrent.engine.trackers import UdpTracker
from pyowtorrent.storage.create import create_torrent
from pyowtorrent.tracker.http_codec import AnnounceRequest
from pyowtorrent.tracker.udp_codec import encode_announce

from .conftest import REPO
from .engine_util import make_payload, until
from .netns_util import (
    Namespace,
    session_on,
    start_opentracker,
    stop,
    tracker_peers,
)

TRACKER, US = "10.77.0.1", "10.77.0.2"


def test_a_session_listening_on_one_address_is_recorded_and_dials_from_it(tmp_path: Path) -> None:
    make_payload(tmp_path / "a" / "ds", {"a.bin": 100_000})
    make_payload(tmp_path / "b" / "ds", {"b.bin": 100_000}, seed=2)
    over_http = create_torrent(tmp_path / "a" / "ds", piece_length=32768, trackers=[f"http://{TRACKER}:6969/announce"])
    over_udp = create_torrent(tmp_path / "b" / "ds", piece_length=32768, trackers=[f"udp://{TRACKER}:6969/announce"])

    async def main() -> dict[str, Any]:
        seen: list[str] = []  # where connections to a listener on the tracker's address come from

        async def note(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(writer.get_extra_info("peername")[0])
            writer.close()

        listener = await asyncio.start_server(note, TRACKER, 7000)
        _, writer = await asyncio.open_connection(TRACKER, 7000)  # unbound: the kernel's choice
        writer.close()
        await until(lambda: len(seen) == 1, 5, "the unbound connection")
        tracker = await start_opentracker(tmp_path / "opentracker", [over_http.info_hash, over_udp.info_hash], TRACKER)
        try:
            async with session_on(US, udp_retransmit_base=1.0) as session:
                port = session.listen_port
                # A leecher (nothing in its directory), so that it dials the peer it is given.
                a = await session.add_torrent(over_http, tmp_path / "leech", peers=[(TRACKER, 7000)])
                await session.add_torrent(over_udp, tmp_path / "b")
                await until(lambda: len(seen) >= 2, 15, "our dial to the listener")
                recorded = {}
                for name, meta in (("http", over_http), ("udp", over_udp)):
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 15
                    while not (ours := [h for h, p in await tracker_peers(f"http://{TRACKER}:6969/announce", meta.info_hash) if p == port]):
                        assert loop.time() < deadline, f"opentracker never listed us for the {name}-announced torrent: {a.status().trackers}"
                        await asyncio.sleep(0.1)
                    recorded[name] = ours
                return {"unbound": seen[0], "dials": set(seen[1:]), "recorded": recorded}
        finally:
            listener.close()
            await stop(tracker)

    with Namespace([TRACKER, US]) as ns:
        out = ns.run(main, timeout=60)
    assert out["unbound"] == TRACKER  # so binding is what the rest shows, not the kernel's choice
    assert out["dials"] == {US}  # every try (plaintext, then encrypted, then again later)
    assert out["recorded"] == {"http": [US], "udp": [US]}


def test_pyowtorrent_seed_with_listen_is_recorded_at_that_address(tmp_path: Path) -> None:
    """The command line, as a user runs it: ``pyowtorrent seed T DIR --listen 10.77.0.2``, opentracker on 10.77.0.1."""
    make_payload(tmp_path / "ds", {"a.bin": 100_000})
    announce = f"http://{TRACKER}:6969/announce"
    meta = create_torrent(tmp_path / "ds", piece_length=32768, trackers=[announce])
    (tmp_path / "t.torrent").write_bytes(meta.to_bytes())

    async def main() -> list[str]:
        tracker = await start_opentracker(tmp_path / "opentracker", [meta.info_hash], TRACKER)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pyowtorrent", "seed", str(tmp_path / "t.torrent"), str(tmp_path),
            "--listen", US, "--port", "0", "--json",
            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            first = json.loads(await proc.stdout.readline())
            assert first["event"] == "listening" and first["host"] == US, first
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while not (ours := [h for h, p in await tracker_peers(announce, meta.info_hash) if p == first["port"]]):
                assert loop.time() < deadline, "opentracker never listed the seeder"
                await asyncio.sleep(0.1)
            return ours
        finally:
            await stop(proc)
            await stop(tracker)

    with Namespace([TRACKER, US]) as ns:
        assert ns.run(main, timeout=60) == [US]


def test_a_bound_session_still_reaches_the_other_family() -> None:
    """Listening on an IPv4 address binds IPv4 only: dials and HTTP to ``::1`` leave unbound and arrive."""

    async def main() -> list[str]:
        from aiohttp import web

        seen: list[str] = []

        async def handler(request: web.Request) -> web.Response:
            seen.append(str(request.remote))
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        for host in ("::1", "127.0.0.1"):
            await web.TCPSite(runner, host, 8080).start()
        try:
            http = HttpClient("test", [US])
            for host in ("[::1]", "127.0.0.1"):
                resp = await http.get(f"http://{host}:8080/", timeout=10, max_body=100)
                assert resp.status == 200
            _, writer = await TcpNetwork(bind=[US]).connect("::1", 8080)
            writer.close()
            await until(lambda: len(seen) == 2, 5, "the requests")
            return seen
        finally:
            await runner.cleanup()

    with Namespace([US]) as ns:
        assert ns.run(main, timeout=30) == ["::1", US]


def test_a_tracker_on_a_public_address_cannot_redirect_announces_to_a_local_one() -> None:
    """libtorrent's SSRF mitigation: a tracker named in a torrent may send us to another public
    address, but not into our own network (loopback here).  The namespace gives the test two
    addresses that count as public."""
    public, other = "203.0.113.5", "203.0.113.6"

    async def main() -> list[str]:
        hits: list[str] = []

        async def local_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            hits.append("local")
            writer.close()

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            hits.append("other")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()

        local = await asyncio.start_server(local_service, "127.0.0.1", 0)
        elsewhere = await asyncio.start_server(answer, other, 0)
        targets = {
            b"/to-local": f"http://127.0.0.1:{local.sockets[0].getsockname()[1]}/announce",
            b"/to-public": f"http://{other}:{elsewhere.sockets[0].getsockname()[1]}/announce",
            b"/to-bad-name": "http://a..b/announce",  # a name IDNA refuses: checked, then a failure like any
        }

        async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            path = (await reader.readuntil(b"\r\n\r\n")).split(b" ", 2)[1]
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % targets[path].encode())
            await writer.drain()
            writer.close()

        tracker = await asyncio.start_server(redirect, public, 0)
        port = tracker.sockets[0].getsockname()[1]
        http = HttpClient("test")
        outcomes = []
        try:
            try:
                await http.get(f"http://{public}:{port}/to-local", timeout=10, max_body=100)
                outcomes.append("followed")
            except HttpFailure as exc:
                outcomes.append(str(exc))
            outcomes.append(str((await http.get(f"http://{public}:{port}/to-public", timeout=10, max_body=100)).body))
            try:
                await http.get(f"http://{public}:{port}/to-bad-name", timeout=10, max_body=100)
                outcomes.append("followed")
            except HttpFailure as exc:
                outcomes.append(str(exc))
        finally:
            for server in (local, elsewhere, tracker):
                server.close()
        return outcomes + hits

    with Namespace([public, other]) as ns:
        refused, body, bad_name, *hits = ns.run(main, timeout=30)
    assert refused.startswith("redirected from a public address to a local one"), refused
    assert bad_name.startswith("cannot connect to a..b"), bad_name
    assert body == "b'ok'" and hits == ["other"]  # nothing ever reached the local service


# -- on the host's loopback -----------------------------------------------------------------


class _UdpTrackerStub(asyncio.DatagramProtocol):
    """Answers a BEP 15 connect and an announce (no peers); keeps each announce packet and its source."""

    def __init__(self) -> None:
        self.announces: list[tuple[bytes, str]] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        action, tid = struct.unpack(">II", data[8:16])
        if action == 0:
            self.transport.sendto(struct.pack(">IIQ", 0, tid, 0x1234), addr)
        elif action == 1:
            self.announces.append((data, addr[0]))
            self.transport.sendto(struct.pack(">IIiii", 1, tid, 1800, 0, 0), addr)


async def _udp_stub() -> tuple[asyncio.DatagramTransport, _UdpTrackerStub, int]:
    transport, stub = await asyncio.get_running_loop().create_datagram_endpoint(_UdpTrackerStub, local_addr=("127.0.0.1", 0))
    return transport, stub, transport.get_extra_info("sockname")[1]


def test_announce_ip_goes_on_the_wire_over_http_and_udp(tmp_path: Path) -> None:
    make_payload(tmp_path / "a" / "ds", {"a.bin": 50_000})
    make_payload(tmp_path / "b" / "ds", {"b.bin": 50_000}, seed=2)

    async def main() -> tuple[bytes, bytes]:
        lines: list[bytes] = []

        async def http_tracker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            lines.append(await reader.readline())
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\nConnection: close\r\n\r\nd8:intervali1800e5:peers0:e")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(http_tracker, "127.0.0.1", 0)
        http_port = server.sockets[0].getsockname()[1]
        transport, stub, udp_port = await _udp_stub()
        over_http = create_torrent(tmp_path / "a" / "ds", piece_length=32768, trackers=[f"http://127.0.0.1:{http_port}/announce"])
        over_udp = create_torrent(tmp_path / "b" / "ds", piece_length=32768, trackers=[f"udp://127.0.0.1:{udp_port}/announce"])
        try:
            async with session_on("127.0.0.1", announce_ip="203.0.113.9", udp_retransmit_base=1.0) as session:
                await session.add_torrent(over_http, tmp_path / "a")
                await session.add_torrent(over_udp, tmp_path / "b")
                await until(lambda: bool(lines) and bool(stub.announces), 15, "both announces")
        finally:
            server.close()
            transport.close()
        return lines[0], stub.announces[0][0]

    request_line, packet = asyncio.run(main())
    query = request_line.split(b" ")[1].split(b"?", 1)[1]
    assert dict(param.split(b"=", 1) for param in query.split(b"&"))[b"ip"] == b"203.0.113.9"
    assert packet[84:88] == socket.inet_aton("203.0.113.9")


def test_without_announce_ip_nothing_is_claimed() -> None:
    from pyowtorrent.engine.services import TorrentSettings

    assert announce_options(TorrentSettings(peer_id=b"-PY0100-" + b"x" * 12, client_name="t")) == (None, ())


def test_udp_announce_carries_an_ipv4_announce_ip_only() -> None:
    def ip_field(ip: str | None) -> int:
        req = AnnounceRequest(info_hash=b"i" * 20, peer_id=b"p" * 20, port=6881, uploaded=0, downloaded=0, left=0, ip=ip)
        return int(struct.unpack(">I", encode_announce(1, 2, req)[84:88])[0])

    assert ip_field("198.51.100.7") == 0xC6336407
    assert ip_field(None) == 0
    assert ip_field("2001:db8::1") == 0  # 32 bits cannot hold it
    assert ip_field("tracker.example") == 0


@pytest.mark.parametrize(
    "listen, sources",
    [
        (["0.0.0.0", "::"], ()),
        (["127.0.0.2"], ("127.0.0.2",)),
        (["10.0.0.5", "::"], ("10.0.0.5",)),
        (["10.0.0.5", "2001:db8::5"], ("10.0.0.5", "2001:db8::5")),
        (["[2001:db8::5]"], ("2001:db8::5",)),
        (["10.0.0.5", "10.0.0.6"], ("10.0.0.5",)),  # the first of a family
        (["10.0.0.5", "0.0.0.0"], ()),  # a wildcard: reachable everywhere, so left to the kernel
        (["localhost"], ()),  # a name: the listen socket resolves it, nothing is bound
    ],
)
def test_source_addresses_are_the_specific_listen_addresses(listen: list[str], sources: tuple[str, ...]) -> None:
    assert source_addresses(listen) == sources
    assert source_addresses(sources) == sources


def test_source_for_picks_by_family() -> None:
    sources = ("10.0.0.5", "2001:db8::5")
    assert source_for(sources, socket.AF_INET) == "10.0.0.5"
    assert source_for(sources, socket.AF_INET6) == "2001:db8::5"
    assert source_for(("10.0.0.5",), socket.AF_INET6) is None


def test_each_client_leaves_from_the_bound_address() -> None:
    """TcpNetwork's dials, the HTTP client and UDP announces, bound to 127.0.0.2, reach 127.0.0.1 from it."""

    async def main() -> tuple[str, str, str, str]:
        from aiohttp import web

        peers: list[str] = []

        async def note(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peers.append(writer.get_extra_info("peername")[0])
            writer.close()

        server = await asyncio.start_server(note, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await TcpNetwork(bind=["127.0.0.2"]).connect("127.0.0.1", port)
        writer.close()
        _, writer = await TcpNetwork(bind=["127.0.0.2"]).connect("127.0.0.1", port, local_host="127.0.0.3")
        writer.close()  # an explicit local_host still wins
        await until(lambda: len(peers) == 2, 5, "the dials")
        server.close()

        remotes: list[str] = []

        async def handler(request: web.Request) -> web.Response:
            remotes.append(str(request.remote))
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            resp = await HttpClient("test", ["127.0.0.2"]).get(f"http://127.0.0.1:{http_port}/", timeout=10, max_body=100)
            assert resp.status == 200
        finally:
            await runner.cleanup()

        transport, stub, udp_port = await _udp_stub()
        try:
            client = UdpTracker(f"udp://127.0.0.1:{udp_port}/announce", retransmit_base=1.0, bind=["127.0.0.2"])
            await client.announce(
                AnnounceRequest(info_hash=b"i" * 20, peer_id=b"p" * 20, port=6881, uploaded=0, downloaded=0, left=0)
            )
        finally:
            transport.close()
        return peers[0], peers[1], remotes[0], stub.announces[0][1]

    assert asyncio.run(main()) == ("127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.2")
