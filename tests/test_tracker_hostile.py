"""The embedded tracker under attack (issue 9): real HTTP on loopback, from many addresses.

Every address here is in 127.0.0.0/8, which is all loopback on Linux: a test
speaks from 127.0.1.x ("honest" hosts) and 127.0.66.x (attackers) to a tracker
listening on 127.0.0.1, so the tracker sees distinct hosts without a packet
leaving the machine.  Each test runs the attack, then checks what a legitimate
client still gets.  Nothing sleeps: time, where it matters, is a fake clock.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import struct
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
import pytest
import yarl

from pyowtorrent.metainfo.bencoding import decode
from pyowtorrent.service.holdings import holder_of
from pyowtorrent.service.swarms import Refusal, SwarmRegistry
from pyowtorrent.service.tracker import Tracker

from .test_tracker_server import FakeClock, peer_id

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
REAL = b"R" * 20  # the real swarm's info-hash
ATTACKER = "127.0.66.6"


def honest(n: int) -> str:
    return f"127.0.1.{n}"




def info_hash(n: int) -> bytes:
    return b"F" + n.to_bytes(19, "big")


def query(params: dict[str, bytes | str | int]) -> str:
    """A query string with every byte of every value percent-escaped, as clients send it."""
    parts = []
    for key, value in params.items():
        raw = value if isinstance(value, bytes) else str(value).encode()
        parts.append(f"{key}={quote_from_bytes(raw, safe='')}")
    return "&".join(parts)


def announce_query(ih: bytes, pid: bytes, port: int = 6881, left: int = 1000, **extra: bytes | str | int) -> str:
    params: dict[str, bytes | str | int] = {
        "info_hash": ih, "peer_id": pid, "port": port, "uploaded": 0, "downloaded": 0, "left": left,
    }
    params.update(extra)
    return query(params)


def compact_peers(blob: bytes) -> list[tuple[str, int]]:
    assert len(blob) % 6 == 0
    return [
        (str(ipaddress.IPv4Address(blob[i : i + 4])), struct.unpack(">H", blob[i + 4 : i + 6])[0])
        for i in range(0, len(blob), 6)
    ]


class Host:
    """HTTP requests to the tracker from one loopback address (keep-alive, one connection pool)."""

    def __init__(self, tracker: Tracker, address: str) -> None:
        assert ipaddress.ip_address(address) in LOOPBACK  # never anything but loopback
        self.tracker = tracker
        self.address = address
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))

    async def get(self, path: str, query_string: str) -> tuple[int, bytes]:
        # encoded=True: send the query exactly as written, no requoting.
        url = yarl.URL(f"http://127.0.0.1:{self.tracker.port}/{path}?{query_string}", encoded=True)
        async with self.session.get(url) as response:
            return response.status, await response.read()

    async def try_announce(self, ih: bytes, pid: bytes, port: int = 6881, **extra: Any) -> dict[bytes, Any]:
        status, body = await self.get("announce", announce_query(ih, pid, port, **extra))
        assert status == 200, body
        answer = decode(body)
        assert isinstance(answer, dict)
        return answer

    async def announce(self, ih: bytes, pid: bytes, port: int = 6881, **extra: Any) -> dict[bytes, Any]:
        answer = await self.try_announce(ih, pid, port, **extra)
        assert b"failure reason" not in answer, (self.address, answer)
        return answer

    async def scrape(self, *hashes: bytes) -> dict[bytes, Any]:
        status, body = await self.get("scrape", "&".join(query({"info_hash": h}) for h in hashes))
        assert status == 200, body
        answer = decode(body)
        assert b"failure reason" not in answer, answer
        files = answer[b"files"]
        assert isinstance(files, dict)
        return files


class Hosts:
    """A :class:`Host` per address, made on first use and closed at the end."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self._hosts: dict[str, Host] = {}

    def __getitem__(self, address: str) -> Host:
        if address not in self._hosts:
            self._hosts[address] = Host(self.tracker, address)
        return self._hosts[address]

    async def close(self) -> None:
        for host in self._hosts.values():
            await host.session.close()


def run(test: Callable[[Tracker, Hosts], Awaitable[None]], **tracker_args: Any) -> None:
    async def main() -> None:
        tracker = Tracker(**tracker_args)
        await tracker.start("127.0.0.1")
        async with tracker:
            hosts = Hosts(tracker)
            try:
                await test(tracker, hosts)
            finally:
                await hosts.close()

    asyncio.run(main())


async def raw_request(port: int, request: bytes, source: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send ``request`` as is on a fresh connection; the status and body of the answer."""
    assert ipaddress.ip_address(source) in LOOPBACK
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(request)
        data = await reader.read()  # the server closes after answering
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def http_get(target: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


# ------------------------------------------------------------ fake peer ids


def test_fake_peer_ids_from_one_address_do_not_evict_the_honest_peers() -> None:
    """One address announcing hundreds of peer ids holds a few entries; the honest peers stay."""

    async def test(tracker: Tracker, hosts: Hosts) -> None:
        for n in range(1, 21):  # a real swarm: 20 hosts, one client each
            await hosts[honest(n)].announce(REAL, peer_id(n), 7000 + n)
        attacker = hosts[ATTACKER]
        for n in range(500):  # five times what the torrent may hold
            await attacker.announce(REAL, peer_id(10_000 + n), 9000 + n % 100)

        answer = await hosts[honest(99)].announce(REAL, peer_id(99), 7099, numwant=200)
        got = compact_peers(answer[b"peers"])
        assert {(honest(n), 7000 + n) for n in range(1, 21)} <= set(got)  # every honest peer
        from_attacker = [port for address, port in got if address == ATTACKER]
        assert 1 <= len(from_attacker) <= 4  # the per-address cap: its newest few entries
        assert len(tracker.peers(REAL)) == 20 + len(from_attacker) + 1

    run(test, max_peers_per_torrent=100)


def test_several_clients_behind_one_address_are_kept() -> None:
    """A few clients behind one NAT are legitimate: up to the cap they all stay; past it, its own oldest goes."""

    async def test(tracker: Tracker, hosts: Hosts) -> None:
        nat = hosts[honest(1)]
        for n in range(1, 5):
            await nat.announce(REAL, peer_id(n), 7000 + n)
        await hosts[honest(2)].announce(REAL, peer_id(50), 7050)
        answer = await hosts[honest(3)].announce(REAL, peer_id(60), 7060)
        assert {port for _, port in compact_peers(answer[b"peers"])} == {7001, 7002, 7003, 7004, 7050}

        await nat.announce(REAL, peer_id(1), 7001)  # a re-announce is no new entry
        await nat.announce(REAL, peer_id(5), 7005)  # a fifth: replaces that address's oldest (peer 2)
        assert [(p.ip, p.port) for p in tracker.peers(REAL)] == [
            (honest(1), 7003), (honest(1), 7004), (honest(2), 7050), (honest(3), 7060),
            (honest(1), 7001), (honest(1), 7005),
        ]

    run(test)


def test_a_full_torrent_sheds_a_random_entry_not_the_oldest() -> None:
    """Many attacking addresses cannot flush the honest peers out of a full torrent in order."""

    async def test(tracker: Tracker, hosts: Hosts) -> None:
        for n in range(1, 11):
            await hosts[honest(n)].announce(REAL, peer_id(n), 7000 + n)
        for n in range(20):  # 10 fill the torrent, 10 more each shed one entry
            await hosts[f"127.0.66.{n + 1}"].announce(REAL, peer_id(100 + n), 9000 + n)
        left = [p for p in tracker.peers(REAL) if p.ip.startswith("127.0.1.")]
        assert len(tracker.peers(REAL)) == 20
        # Oldest-first would leave none; shedding at random leaves about (19/20)**10 of them.
        assert 2 <= len(left) < 10

        answer = await hosts[honest(99)].announce(REAL, peer_id(99), 7099, numwant=200)
        assert {(p.ip, p.port) for p in left} <= set(compact_peers(answer[b"peers"]))

    run(test, max_peers_per_torrent=20, rng=random.Random(9))


# --------------------------------------------------------- info-hash flood


def test_an_info_hash_flood_does_not_lock_out_a_new_torrent() -> None:
    async def test(tracker: Tracker, hosts: Hosts) -> None:
        await hosts[honest(1)].announce(REAL, peer_id(1), 7001, left=0)
        await hosts[honest(2)].announce(REAL, peer_id(2), 7002)
        attacker = hosts[ATTACKER]
        refused = 0
        for n in range(300):  # far more torrents than the tracker may hold
            answer = await attacker.try_announce(info_hash(n), peer_id(5), 9000)
            refused += b"failure reason" in answer
        assert refused > 0  # the tracker is full, for the attacker

        # A new torrent from another address gets in, and stays in through more flooding.
        fresh = b"N" * 20
        await hosts[honest(3)].announce(fresh, peer_id(3), 7003, left=0)
        for n in range(300, 400):
            await attacker.try_announce(info_hash(n), peer_id(5), 9000)
        answer = await hosts[honest(4)].announce(fresh, peer_id(4), 7004)
        assert compact_peers(answer[b"peers"]) == [(honest(3), 7003)]
        # The real swarm was never touched; a second newcomer gets in too.
        answer = await hosts[honest(5)].announce(REAL, peer_id(55), 7055)
        assert set(compact_peers(answer[b"peers"])) == {(honest(1), 7001), (honest(2), 7002)}
        await hosts[honest(6)].announce(b"M" * 20, peer_id(6), 7006)
        assert len(await hosts[honest(6)].scrape()) == 64

    run(test, max_torrents=64)


def test_one_address_may_start_only_so_many_torrents() -> None:
    async def test(tracker: Tracker, hosts: Hosts) -> None:
        attacker = hosts[ATTACKER]
        for n in range(5):
            await attacker.announce(info_hash(n), peer_id(5), 9000)
        refused = await attacker.try_announce(info_hash(5), peer_id(5), 9000)
        assert b"torrents" in refused[b"failure reason"]
        await attacker.announce(info_hash(0), peer_id(5), 9000)  # its own torrents: still served
        await hosts[honest(1)].announce(info_hash(5), peer_id(1), 7001)  # another address: fine
        # Once somebody else is in one of its torrents, that one no longer counts.
        await hosts[honest(1)].announce(info_hash(0), peer_id(1), 7001)
        await attacker.announce(info_hash(6), peer_id(5), 9000)
        assert len(await attacker.scrape()) == 7

    run(test, max_torrents_per_address=5)


def test_on_an_allow_list_tracker_a_flood_makes_no_swarms() -> None:
    async def test(tracker: Tracker, hosts: Hosts) -> None:
        for n in range(200):
            answer = await hosts[ATTACKER].try_announce(info_hash(n), peer_id(5), 9000)
            assert b"not allowed" in answer[b"failure reason"]
        await hosts[honest(1)].announce(REAL, peer_id(1), 7001)
        assert list(await hosts[honest(1)].scrape()) == [REAL]

    run(test, allowed_info_hashes=[REAL], max_torrents=4)


# ------------------------------------------------------------- peer table


def test_filling_the_peer_table_does_not_lock_out_an_honest_peer() -> None:
    """An address that holds most of the tracker's entries gives one up for a newcomer."""

    async def test(tracker: Tracker, hosts: Hosts) -> None:
        await hosts[honest(1)].announce(REAL, peer_id(1), 7001, left=0)
        await hosts[honest(2)].announce(REAL, peer_id(2), 7002)
        attacker = hosts[ATTACKER]
        for n in range(12):  # 12 torrents x 4 entries: the table's 50 entries are full
            for k in range(4):
                await attacker.announce(info_hash(n), peer_id(100 + k), 9000 + k)
        answer = await hosts[honest(3)].announce(REAL, peer_id(3), 7003)
        assert set(compact_peers(answer[b"peers"])) == {(honest(1), 7001), (honest(2), 7002)}
        # Each newcomer takes an entry from whoever holds the most, down to one each:
        for n in range(4, 60):
            await hosts[honest(n)].try_announce(info_hash(1000 + n), peer_id(n), 7000 + n)
        held = [p for n in range(12) for p in tracker.peers(info_hash(n)) if p.ip == ATTACKER]
        assert len(held) == 1
        # then nobody holds more than a newcomer would, and a full table refuses.
        answer = await hosts[honest(70)].try_announce(REAL, peer_id(70), 7070)
        assert b"peers" in answer[b"failure reason"]
        assert {p.port for p in tracker.peers(REAL)} == {7001, 7002, 7003}

    run(test, max_peers=50)


# -------------------------------------------------------- malformed requests


def test_malformed_http_requests_get_a_400_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = announce_query(REAL, peer_id(1), 7001).encode()
    requests = {
        "query over 64 KiB": http_get(b"/announce?" + good + b"&key=" + b"k" * 70_000),
        "non-ASCII bytes": http_get(b"/announce?" + good + b"&key=\xc3\xa9t\xc3\xa9"),
        "invalid UTF-8": http_get(b"/announce?" + good + b"&key=\xff\xfe"),
        "control bytes": http_get(b"/announce?" + good + b"&key=a\x01b\x7f"),
        "header over the limit": b"GET /announce?" + good + b" HTTP/1.1\r\nX: " + b"x" * 20_000 + b"\r\n\r\n",
        "too many headers": b"GET /scrape HTTP/1.1\r\n" + b"".join(b"X%d: y\r\n" % i for i in range(500)) + b"\r\n",
        "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n",
        "bad version": b"GET /announce HTTP/9.9\r\n\r\n",
    }

    async def test(tracker: Tracker, hosts: Hosts) -> None:
        for name, request in requests.items():
            status, body = await raw_request(tracker.port, request, source=ATTACKER)
            if status == 200:  # what reaches the tracker is a bencoded failure reason
                assert b"failure reason" in decode(body), name
            else:
                assert status in (400, 414, 431), (name, status)
        # between 4 KiB and 64 KiB the tracker itself answers, with a failure reason
        status, body = await raw_request(tracker.port, http_get(b"/announce?" + good + b"&key=" + b"k" * 10_000))
        assert status == 200 and b"failure reason" in decode(body)
        # the server still serves
        await hosts[honest(1)].announce(REAL, peer_id(1), 7001)
        answer = await hosts[honest(2)].announce(REAL, peer_id(2), 7002)
        assert compact_peers(answer[b"peers"]) == [(honest(1), 7001)]

    run(test)
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert not tracebacks, [record.getMessage() for record in tracebacks]
    assert all(record.levelno <= logging.WARNING for record in caplog.records)
    assert all("\n" not in record.getMessage() for record in caplog.records)  # one line each


# ---------------------------------------------------------------- scrapes


def test_a_full_scrape_is_built_at_most_once_in_a_while() -> None:
    """A full scrape costs one pass over every torrent: repeated ones get the same answer for 30 s."""
    clock = FakeClock()

    async def test(tracker: Tracker, hosts: Hosts) -> None:
        client = hosts[honest(1)]
        await client.announce(info_hash(1), peer_id(1), 7001)
        first = await client.get("scrape", "")
        await client.announce(info_hash(2), peer_id(1), 7001)
        assert await client.get("scrape", "") == first  # the same bytes, not rebuilt
        assert set(await client.scrape(info_hash(2))) == {info_hash(2)}  # a named scrape is current
        clock.now += 31
        assert set(await client.scrape()) == {info_hash(1), info_hash(2)}
        tracker.allow(info_hash(3))  # the operator's changes show at once
        assert set(await client.scrape()) == {info_hash(1), info_hash(2), info_hash(3)}

    run(test, clock=clock)


def test_a_scrape_of_many_info_hashes_is_refused_cheaply() -> None:
    async def test(tracker: Tracker, hosts: Hosts) -> None:
        many = "&".join(query({"info_hash": info_hash(n)}) for n in range(500))  # 35 KB
        status, body = await hosts[ATTACKER].get("scrape", many)
        assert status == 200 and b"failure reason" in decode(body)
        await hosts[honest(1)].announce(REAL, peer_id(1), 7001)
        assert list(await hosts[honest(1)].scrape(REAL)) == [REAL]

    run(test)


# ----------------------------------------------------- the registry directly


def registry(clock: Callable[[], float] = lambda: 1000.0, **bounds: Any) -> SwarmRegistry:
    limits: dict[str, Any] = {
        "max_peers_per_torrent": 10_000, "max_peers_per_address": 4, "max_torrents": 10_000,
        "max_torrents_per_address": 1000, "max_peers": 100_000,
    }
    limits.update(bounds)
    return SwarmRegistry(interval=100, clock=clock, allowed_info_hashes=None, rng=random.Random(3), **limits)


def test_an_ipv6_host_is_its_slash_64() -> None:
    """An IPv6 host picks addresses from a whole /64: the per-host caps count the /64."""
    swarms = registry(max_torrents_per_address=3)
    one_host = [ipaddress.IPv6Address(f"2001:db8::{n:x}") for n in range(1, 11)]
    for n, address in enumerate(one_host):
        swarms.announce(REAL, peer_id(n), address, 6881, 5, None, 50)
    assert [p.ip for p in swarms.peers(REAL)] == [str(a) for a in one_host[-4:]]
    other = ipaddress.IPv6Address("2001:db8:0:1::1")  # the next /64: another host
    _, chosen = swarms.announce(REAL, peer_id(99), other, 6881, 5, None, 50)
    assert len(chosen) == 4
    for n in range(3):
        swarms.announce(info_hash(n), peer_id(1), one_host[n], 6881, 5, None, 50)
    with pytest.raises(Refusal):
        swarms.announce(info_hash(3), peer_id(1), one_host[5], 6881, 5, None, 50)
    swarms.announce(info_hash(3), peer_id(1), other, 6881, 5, None, 50)
    assert holder_of(ipaddress.IPv4Address("192.0.2.1")) != holder_of(ipaddress.IPv4Address("192.0.2.2"))


def test_the_bounds_hold_whatever_the_announces() -> None:
    """Random announces, stops, scrapes and expiry from a handful of hosts: no bound is ever passed."""
    rnd = random.Random(11)
    clock = FakeClock()
    for _ in range(40):
        bounds = {
            "max_peers_per_torrent": rnd.randint(1, 8), "max_peers_per_address": rnd.randint(1, 4),
            "max_torrents": rnd.randint(1, 6), "max_torrents_per_address": rnd.randint(1, 4),
            "max_peers": rnd.randint(1, 25),
        }
        swarms = registry(clock, **bounds)
        hosts = [ipaddress.ip_address(f"127.0.3.{n}") for n in range(1, 6)] + [ipaddress.ip_address("2001:db8::1")]
        for _ in range(300):
            ih = info_hash(rnd.randrange(8))
            event = rnd.choice([None, None, "started", "completed", "stopped"])
            if rnd.random() < 0.1:
                clock.now += rnd.choice([10, 60, 201])
            try:
                swarms.announce(ih, peer_id(rnd.randrange(6)), rnd.choice(hosts), 6881, rnd.choice([0, 5]), event, 5)
            except Refusal:
                pass
            files = swarms.scrape([])
            assert len(files) <= bounds["max_torrents"]
            peers = {h: swarms.peers(h) for h in files}
            assert sum(len(p) for p in peers.values()) <= bounds["max_peers"]
            for h, listed in peers.items():
                assert len(listed) <= bounds["max_peers_per_torrent"]
                per_host = [p.ip for p in listed]
                assert max(map(per_host.count, per_host), default=0) <= bounds["max_peers_per_address"]
                stats = files[h]
                assert stats.complete + stats.incomplete == len(listed)
                assert stats.complete == sum(p.left == 0 for p in listed)


def test_a_host_is_an_ipv4_address_or_an_ipv6_slash_64_in_text_too() -> None:
    """The engine's per-address caps (pending handshakes, connections per torrent) count hosts the
    same way the tracker does, from the address text a socket gives."""
    from pyowtorrent.tracker.peers import holder_of_text

    assert holder_of_text("2001:db8::1") == holder_of_text("2001:db8::ffff:2")
    assert holder_of_text("2001:db8::1") != holder_of_text("2001:db8:0:1::1")
    assert holder_of_text("fe80::1%eth0") == holder_of_text("fe80::2")
    assert holder_of_text("192.0.2.1") != holder_of_text("192.0.2.2")
    assert holder_of_text("not-an-address") == b"not-an-address"
