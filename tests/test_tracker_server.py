"""The embedded tracker, over real HTTP on loopback (IPv4 and IPv6).

Each test runs its own event loop with ``asyncio.run``; expiry is driven by a
fake clock, so nothing sleeps.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
import pytest
import yarl

from pyowtorrent.metainfo.bencoding import decode
from pyowtorrent.service.tracker import MAX_QUERY_LENGTH, NOT_ALLOWED, Tracker, peer_address

HASH_A = b"A" * 20
HASH_B = b"B" * 20
HASH_C = b"C" * 20


def _ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 loopback here")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def peer_id(n: int) -> bytes:
    return b"-PY0100-" + f"{n:012d}".encode()


def query(params: Sequence[tuple[str, bytes | str | int]]) -> str:
    """A query string with every byte of every value percent-escaped, as clients send it."""
    parts = []
    for key, value in params:
        raw = value if isinstance(value, bytes) else str(value).encode()
        parts.append(f"{key}={quote_from_bytes(raw, safe='')}")
    return "&".join(parts)


def announce_params(
    info_hash: bytes = HASH_A, pid: bytes = peer_id(1), port: int = 6881, left: int = 1000, **extra: bytes | str | int
) -> list[tuple[str, bytes | str | int]]:
    params: list[tuple[str, bytes | str | int]] = [
        ("info_hash", info_hash),
        ("peer_id", pid),
        ("port", port),
        ("uploaded", 0),
        ("downloaded", 0),
        ("left", left),
    ]
    params.extend(extra.items())
    return params


class Client:
    """Real HTTP requests to one tracker, from one host address."""

    def __init__(self, session: aiohttp.ClientSession, tracker: Tracker, host: str = "127.0.0.1") -> None:
        self.session = session
        self.tracker = tracker
        self.host = host

    async def get_raw(self, path: str, query_string: str) -> tuple[int, bytes]:
        base = self.tracker.announce_url(self.host).rsplit("/", 1)[0]
        # encoded=True: send the query exactly as written, no requoting.
        url = yarl.URL(f"{base}/{path}?{query_string}" if query_string else f"{base}/{path}", encoded=True)
        async with self.session.get(url) as response:
            return response.status, await response.read()

    async def get(self, path: str, query_string: str) -> dict[bytes, Any]:
        status, body = await self.get_raw(path, query_string)
        assert status == 200, body
        answer = decode(body)
        assert isinstance(answer, dict)
        return answer

    async def announce(self, **kwargs: Any) -> dict[bytes, Any]:
        answer = await self.get("announce", query(announce_params(**kwargs)))
        assert b"failure reason" not in answer, answer
        return answer

    async def scrape(self, *info_hashes: bytes) -> dict[bytes, Any]:
        answer = await self.get("scrape", query([("info_hash", h) for h in info_hashes]))
        assert b"failure reason" not in answer, answer
        files = answer[b"files"]
        assert isinstance(files, dict)
        return files


def run(
    test: Callable[[Tracker, Client], Awaitable[None]],
    *,
    hosts: Sequence[str] = ("127.0.0.1",),
    **tracker_args: Any,
) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            tracker = Tracker(**tracker_args)
            await tracker.start(list(hosts))
            async with tracker:
                await test(tracker, Client(session, tracker, hosts[0]))

    asyncio.run(main())


def compact_peers(blob: bytes) -> set[tuple[str, int]]:
    assert len(blob) % 6 == 0
    return {
        (str(ipaddress.IPv4Address(blob[i : i + 4])), struct.unpack(">H", blob[i + 4 : i + 6])[0])
        for i in range(0, len(blob), 6)
    }


def compact_peers6(blob: bytes) -> set[tuple[str, int]]:
    assert len(blob) % 18 == 0
    return {
        (str(ipaddress.IPv6Address(blob[i : i + 16])), struct.unpack(">H", blob[i + 16 : i + 18])[0])
        for i in range(0, len(blob), 18)
    }


# --------------------------------------------------------------------- announce


def test_announce_returns_the_other_peers_compact() -> None:
    async def test(tracker: Tracker, client: Client) -> None:
        first = await client.announce(pid=peer_id(1), port=7001, left=500, event="started")
        assert first[b"peers"] == b""  # nobody else yet
        assert first[b"interval"] == 1800 and first[b"min interval"] == 60
        assert (first[b"complete"], first[b"incomplete"]) == (0, 1)

        second = await client.announce(pid=peer_id(2), port=7002, left=0, event="started")
        assert compact_peers(second[b"peers"]) == {("127.0.0.1", 7001)}
        assert (second[b"complete"], second[b"incomplete"]) == (1, 1)
        assert b"peers6" not in second

        again = await client.announce(pid=peer_id(1), port=7001, left=200)
        assert compact_peers(again[b"peers"]) == {("127.0.0.1", 7002)}  # never itself
        assert [(p.peer_id, p.port, p.left) for p in tracker.peers(HASH_A)] == [
            (peer_id(2), 7002, 0),
            (peer_id(1), 7001, 200),
        ]

    run(test, min_interval=60)


def test_announce_non_compact_with_and_without_peer_ids() -> None:
    async def test(tracker: Tracker, client: Client) -> None:
        await client.announce(pid=peer_id(1), port=7001)
        await client.announce(pid=peer_id(2), port=7002)

        listed = await client.announce(pid=peer_id(3), port=7003, compact=0)
        peers = listed[b"peers"]
        assert isinstance(peers, list)
        assert sorted((p[b"peer id"], p[b"ip"], p[b"port"]) for p in peers) == [
            (peer_id(1), b"127.0.0.1", 7001),
            (peer_id(2), b"127.0.0.1", 7002),
        ]

        anonymous = await client.announce(pid=peer_id(3), port=7003, compact=0, no_peer_id=1)
        assert sorted((sorted(p), p[b"port"]) for p in anonymous[b"peers"]) == [
            ([b"ip", b"port"], 7001),
            ([b"ip", b"port"], 7002),
        ]

        # compact is the default, and no_peer_id changes nothing there
        assert compact_peers((await client.announce(pid=peer_id(3), port=7003, no_peer_id=1))[b"peers"]) == {
            ("127.0.0.1", 7001),
            ("127.0.0.1", 7002),
        }

    run(test)


@needs_ipv6
def test_ipv6_peers_come_in_peers6() -> None:
    async def test(tracker: Tracker, client4: Client) -> None:
        client6 = Client(client4.session, tracker, "::1")
        assert tracker.announce_url("::1") == f"http://[::1]:{tracker.port}/announce"

        from6 = await client6.announce(pid=peer_id(6), port=7006)
        assert from6[b"peers"] == b""
        await client4.announce(pid=peer_id(4), port=7004)

        seen_by_4 = await client4.announce(pid=peer_id(4), port=7004)
        assert seen_by_4[b"peers"] == b""
        assert compact_peers6(seen_by_4[b"peers6"]) == {("::1", 7006)}

        seen_by_6 = await client6.announce(pid=peer_id(6), port=7006)
        assert compact_peers(seen_by_6[b"peers"]) == {("127.0.0.1", 7004)}
        assert b"peers6" not in seen_by_6

        listed = await client4.announce(pid=peer_id(4), port=7004, compact=0)
        assert [(p[b"ip"], p[b"port"]) for p in listed[b"peers"]] == [(b"::1", 7006)]
        assert {p.ip for p in tracker.peers(HASH_A)} == {"::1", "127.0.0.1"}

    run(test, hosts=("127.0.0.1", "::1"))


def test_ipv4_mapped_ipv6_addresses_count_as_ipv4() -> None:
    assert peer_address("::ffff:192.0.2.7") == ipaddress.IPv4Address("192.0.2.7")
    assert peer_address("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1")
    assert peer_address("192.0.2.7") == ipaddress.IPv4Address("192.0.2.7")


def test_the_ip_parameter_is_ignored() -> None:
    async def test(tracker: Tracker, client: Client) -> None:
        await client.announce(pid=peer_id(1), port=7001, ip="198.51.100.9")
        assert [p.ip for p in tracker.peers(HASH_A)] == ["127.0.0.1"]

    run(test)


def test_numwant_is_honoured_and_clamped() -> None:
    async def test(tracker: Tracker, client: Client) -> None:
        for n in range(1, 13):
            await client.announce(pid=peer_id(n), port=7000 + n)
        me = peer_id(99)

        async def count(**extra: Any) -> int:
            answer = await client.announce(pid=me, port=7099, **extra)
            return len(answer[b"peers"]) // 6

        assert await count(numwant=3) == 3
        assert await count(numwant=0) == 0
        assert await count(numwant=100) == 8  # max_numwant
        assert await count() == 5  # default_numwant
        assert await count(numwant=-1) == 5  # "the default", as some clients send
        sample = await client.announce(pid=me, port=7099, numwant=8)
        assert compact_peers(sample[b"peers"]) <= {("127.0.0.1", 7000 + n) for n in range(1, 13)}
        assert len(compact_peers(sample[b"peers"])) == 8  # distinct peers
        assert (await client.announce(pid=me, port=7099, numwant=20, compact=0))[b"peers"].__len__() == 8

    # 13 clients on one address: past the per-address cap (4) that the hostile tests check.
    run(test, max_numwant=8, default_numwant=5, max_peers_per_address=16)


def test_stopped_removes_the_peer() -> None:
    async def test(tracker: Tracker, client: Client) -> None:
        await client.announce(pid=peer_id(1), port=7001, event="started")
        await client.announce(pid=peer_id(2), port=7002, event="started")
        stopped = await client.announce(pid=peer_id(1), port=7001, event="stopped")
        assert stopped[b"peers"] == b""
        assert [p.peer_id for p in tracker.peers(HASH_A)] == [peer_id(2)]
        assert (await client.announce(pid=peer_id(2), port=7002))[b"peers"] == b""
        files = await client.scrape(HASH_A)
        assert files[HASH_A] == {b"complete": 0, b"incomplete": 1, b"downloaded": 0}
        # stopping again, or stopping on a torrent never seen, is harmless
        await client.announce(pid=peer_id(1), port=7001, event="stopped")
        await client.announce(info_hash=HASH_B, pid=peer_id(1), port=7001, event="stopped", compact=0)
        assert HASH_B not in await client.scrape()

    run(test)


def test_completed_is_counted_in_scrape() -> None:
    async def test(tracker: Tracker, client: Client) -> None:
        await client.announce(pid=peer_id(1), port=7001, left=100, event="started")
        await client.announce(pid=peer_id(2), port=7002, left=100, event="started")
        await client.announce(pid=peer_id(1), port=7001, left=0, event="completed")
        assert (await client.scrape(HASH_A))[HASH_A] == {b"complete": 1, b"incomplete": 1, b"downloaded": 1}
        # a repeated ``completed`` from the same entry counts once
        await client.announce(pid=peer_id(1), port=7001, left=0, event="completed")
        await client.announce(pid=peer_id(2), port=7002, left=0, event="completed")
        assert (await client.scrape(HASH_A))[HASH_A] == {b"complete": 2, b"incomplete": 0, b"downloaded": 2}
        # the count outlives the peers
        await client.announce(pid=peer_id(1), port=7001, left=0, event="stopped")
        await client.announce(pid=peer_id(2), port=7002, left=0, event="stopped")
        assert (await client.scrape(HASH_A))[HASH_A] == {b"complete": 0, b"incomplete": 0, b"downloaded": 2}

    run(test)


# ----------------------------------------------------------------------- scrape


def test_scrape_all_one_and_several() -> None:
    async def test(tracker: Tracker, client: Client) -> None:
        await client.announce(info_hash=HASH_A, pid=peer_id(1), left=0)
        await client.announce(info_hash=HASH_A, pid=peer_id(2), left=5)
        await client.announce(info_hash=HASH_B, pid=peer_id(1), left=5)
        await client.announce(info_hash=HASH_C, pid=peer_id(3), left=0)
        a = {b"complete": 1, b"incomplete": 1, b"downloaded": 0}
        b = {b"complete": 0, b"incomplete": 1, b"downloaded": 0}
        c = {b"complete": 1, b"incomplete": 0, b"downloaded": 0}
        assert await client.scrape() == {HASH_A: a, HASH_B: b, HASH_C: c}
        assert await client.scrape(HASH_B) == {HASH_B: b}
        assert await client.scrape(HASH_A, HASH_C, HASH_A) == {HASH_A: a, HASH_C: c}
        unknown = b"\x00" * 20
        assert await client.scrape(unknown) == {unknown: {b"complete": 0, b"incomplete": 0, b"downloaded": 0}}
        failure = await client.get("scrape", query([("info_hash", HASH_A), ("info_hash", b"short")]))
        assert b"20 bytes" in failure[b"failure reason"]
        # the scrape URL is the announce URL with "announce" replaced (BEP 48)
        assert tracker.scrape_url() == tracker.announce_url().replace("announce", "scrape")

    run(test)


# ----------------------------------------------------------------------- expiry


def test_peers_expire_after_two_intervals() -> None:
    clock = FakeClock()

    async def test(tracker: Tracker, client: Client) -> None:
        await client.announce(pid=peer_id(1), port=7001, left=0)
        clock.now += 50
        await client.announce(pid=peer_id(2), port=7002, left=10)

        clock.now += 2 * 100 - 50  # peer 1 silent for exactly two intervals: still there
        assert {p.peer_id for p in tracker.peers(HASH_A)} == {peer_id(1), peer_id(2)}
        clock.now += 1  # now past: gone, from answers and counts alike
        seen = await client.announce(pid=peer_id(3), port=7003)
        assert compact_peers(seen[b"peers"]) == {("127.0.0.1", 7002)}
        assert seen[b"complete"] == 0 and seen[b"incomplete"] == 2

        await client.announce(pid=peer_id(2), port=7002, left=10)  # peer 2 refreshes
        clock.now += 150
        assert {p.peer_id for p in tracker.peers(HASH_A)} == {peer_id(2), peer_id(3)}
        clock.now += 100
        assert (await client.scrape(HASH_A))[HASH_A] == {b"complete": 0, b"incomplete": 0, b"downloaded": 0}
        assert tracker.peers(HASH_A) == []

    run(test, interval=100, clock=clock)


# ------------------------------------------------------------------- allow-list


def test_allow_list_rejects_other_torrents() -> None:
    async def test(tracker: Tracker, client: Client) -> None:
        await client.announce(info_hash=HASH_A, pid=peer_id(1))
        refused = await client.get("announce", query(announce_params(info_hash=HASH_B, pid=peer_id(1))))
        assert refused == {b"failure reason": NOT_ALLOWED.encode()}
        refused = await client.get("announce", query(announce_params(info_hash=HASH_B, event="stopped")))
        assert refused == {b"failure reason": NOT_ALLOWED.encode()}
        assert tracker.peers(HASH_B) == []
        # a full scrape lists every allowed torrent, peers or not; others are left out
        assert await client.scrape() == {
            HASH_A: {b"complete": 0, b"incomplete": 1, b"downloaded": 0},
            HASH_C: {b"complete": 0, b"incomplete": 0, b"downloaded": 0},
        }
        assert await client.scrape(HASH_B, HASH_C) == {HASH_C: {b"complete": 0, b"incomplete": 0, b"downloaded": 0}}

        tracker.allow(HASH_B)
        await client.announce(info_hash=HASH_B, pid=peer_id(1))
        tracker.disallow(HASH_A)
        assert tracker.peers(HASH_A) == []
        refused = await client.get("announce", query(announce_params(info_hash=HASH_A, pid=peer_id(2))))
        assert refused == {b"failure reason": NOT_ALLOWED.encode()}
        assert tracker.allowed_info_hashes == frozenset({HASH_B, HASH_C})

    run(test, allowed_info_hashes=[HASH_A, HASH_C])


def test_allow_checks_the_info_hash_length() -> None:
    with pytest.raises(ValueError):
        Tracker(allowed_info_hashes=[b"short"])
    with pytest.raises(ValueError):
        Tracker().allow(b"x" * 21)


# ----------------------------------------------------------------- bad requests


Params = list[tuple[str, bytes | str | int]]


def _without(params: Params, name: str) -> Params:
    return [(key, value) for key, value in params if key != name]


def _with(params: Params, name: str, value: bytes | str | int) -> Params:
    return [(key, value if key == name else v) for key, v in params]


GOOD = announce_params()

MALFORMED = {
    "no query": "",
    "garbage": "&&&=&%zz&==",
    "missing info_hash": query(_without(GOOD, "info_hash")),
    "19-byte info_hash": query(_with(GOOD, "info_hash", b"x" * 19)),
    "21-byte info_hash": query(_with(GOOD, "info_hash", b"x" * 21)),
    "missing peer_id": query(_without(GOOD, "peer_id")),
    "short peer_id": query(_with(GOOD, "peer_id", b"abc")),
    "missing port": query(_without(GOOD, "port")),
    "port 0": query(_with(GOOD, "port", 0)),
    "port 65536": query(_with(GOOD, "port", 65536)),
    "port not a number": query(_with(GOOD, "port", "http")),
    "missing left": query(_without(GOOD, "left")),
    "negative left": query(_with(GOOD, "left", -1)),
    "left not ASCII digits": query(_with(GOOD, "left", "\u00b2")),
    "left too large": query(_with(GOOD, "left", "9" * 30)),
    "negative uploaded": query(_with(GOOD, "uploaded", -5)),
    "downloaded not a number": query(_with(GOOD, "downloaded", "1e6")),
    "bad event": query(GOOD + [("event", "exploded")]),
    "bad numwant": query(GOOD + [("numwant", "lots")]),
    "huge query": query(GOOD + [("key", "k" * (MAX_QUERY_LENGTH + 1))]),
    "very huge query": query(GOOD + [("key", "k" * 50_000)]),
}


def test_malformed_announces_get_a_failure_reason() -> None:
    async def test(tracker: Tracker, client: Client) -> None:
        for name, query_string in MALFORMED.items():
            status, body = await client.get_raw("announce", query_string)
            assert status == 200, (name, body)
            answer = decode(body)
            assert list(answer) == [b"failure reason"], (name, answer)
            assert answer[b"failure reason"], name
        assert tracker.peers(HASH_A) == []
        # what aiohttp's HTTP parser refuses (a request line past its limit,
        # unescaped non-ASCII bytes) is its 400, never a 500 ...
        status, _ = await client.get_raw("announce", query(GOOD + [("key", "k" * 100_000)]))
        assert status == 400
        status, _ = await client.get_raw("announce", query(GOOD) + "&key=\u00e9t\u00e9")
        assert status == 400
        # ... and the tracker still works
        await client.announce()
        assert len(tracker.peers(HASH_A)) == 1

    run(test)


def test_an_internal_error_is_a_failure_reason_not_a_500() -> None:
    def broken_clock() -> float:
        raise RuntimeError("clock broke")

    async def test(tracker: Tracker, client: Client) -> None:
        answer = await client.get("announce", query(GOOD))
        assert answer == {b"failure reason": b"internal tracker error"}
        answer = await client.get("scrape", "")
        assert answer == {b"failure reason": b"internal tracker error"}

    run(test, clock=broken_clock)


def test_binary_info_hash_and_peer_id_round_trip() -> None:
    # Invalid UTF-8, and bytes that mean something in a query string.
    info_hash = b"\xff\xfe\x80\x00&=+%?#\xc3\x28 \x0a\x0d\xed\xa0\x80/;"
    pid = bytes(range(235, 255))
    assert len(info_hash) == len(pid) == 20
    hashes = [bytes((i + j) % 256 for j in range(20)) for i in range(0, 256, 20)]  # every byte value

    async def test(tracker: Tracker, client: Client) -> None:
        await client.announce(info_hash=info_hash, pid=pid, port=7001)
        listed = await client.announce(info_hash=info_hash, pid=peer_id(2), port=7002, compact=0)
        assert [p[b"peer id"] for p in listed[b"peers"]] == [pid]
        assert [p.peer_id for p in tracker.peers(info_hash)] == [pid, peer_id(2)]
        assert list(await client.scrape(info_hash)) == [info_hash]
        for h in hashes:
            await client.announce(info_hash=h, pid=h, port=7003)
            assert [p.peer_id for p in tracker.peers(h)] == [h]
        assert set(await client.scrape()) == {info_hash, *hashes}
        assert set(await client.scrape(*hashes[:5])) == set(hashes[:5])

    run(test)


# ---------------------------------------------------------------------- bounds


def test_peers_per_torrent_are_bounded() -> None:
    # A full torrent sheds a random entry, not the oldest (tests/test_tracker_hostile.py
    # shows why); the newest announce is always kept, a re-announce sheds nothing.
    clock = FakeClock()

    async def test(tracker: Tracker, client: Client) -> None:
        for n in range(1, 5):
            clock.now += 1
            await client.announce(pid=peer_id(n), port=7000 + n)
        kept = [p.peer_id for p in tracker.peers(HASH_A)]
        assert len(kept) == 3 and kept[-1] == peer_id(4)
        clock.now += 1
        await client.announce(pid=kept[0], port=7000)  # refreshed: now the newest, nobody shed
        assert [p.peer_id for p in tracker.peers(HASH_A)] == [*kept[1:], kept[0]]
        await client.announce(pid=peer_id(5), port=7005)
        now = [p.peer_id for p in tracker.peers(HASH_A)]
        assert len(now) == 3 and now[-1] == peer_id(5) and set(now) < {*kept, peer_id(5)}

    run(test, max_peers_per_torrent=3, clock=clock)


def test_torrents_and_peers_are_bounded_on_an_open_tracker() -> None:
    clock = FakeClock()

    async def test(tracker: Tracker, client: Client) -> None:
        await client.announce(info_hash=HASH_A, pid=peer_id(1))
        await client.announce(info_hash=HASH_B, pid=peer_id(2))
        full = await client.get("announce", query(announce_params(info_hash=HASH_C, pid=peer_id(3))))
        assert b"torrents" in full[b"failure reason"]
        # a torrent everybody left makes room
        await client.announce(info_hash=HASH_B, pid=peer_id(2), event="stopped")
        await client.announce(info_hash=HASH_C, pid=peer_id(3))
        assert set(await client.scrape()) == {HASH_A, HASH_C}
        # three peers in all, at most
        await client.announce(info_hash=HASH_A, pid=peer_id(4))
        full = await client.get("announce", query(announce_params(info_hash=HASH_A, pid=peer_id(5))))
        assert b"peers" in full[b"failure reason"]
        await client.announce(info_hash=HASH_A, pid=peer_id(4))  # a known peer may re-announce
        clock.now += 1000  # everyone expires: room again
        await client.announce(info_hash=HASH_A, pid=peer_id(5))

    run(test, max_torrents=2, max_peers=3, interval=100, clock=clock)


# ------------------------------------------------------------------- lifecycle


def test_context_manager_starts_and_closes() -> None:
    async def main() -> None:
        async with Tracker() as tracker:
            port = tracker.port
            assert tracker.announce_url() == f"http://127.0.0.1:{port}/announce"
            async with aiohttp.ClientSession() as session:
                answer = await Client(session, tracker).announce()
                assert answer[b"peers"] == b""
        with pytest.raises(OSError):  # nothing listens any more
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
        await tracker.close()  # twice is fine

    asyncio.run(main())


def test_not_started() -> None:
    tracker = Tracker()
    with pytest.raises(RuntimeError):
        _ = tracker.port
    with pytest.raises(ValueError):
        Tracker(interval=0)
