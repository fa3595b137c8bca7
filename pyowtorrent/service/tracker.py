"""An embedded HTTP tracker: BEP 3 announce, BEP 23 compact peers, BEP 7 ``peers6``, BEP 48 scrape.

This is a convenience for self-hosted, single-site distribution: a maintainer
who seeds a dataset can run the tracker in the same process (or beside it)
and put :meth:`Tracker.announce_url` in the ``.torrent``.  Its state lives in
memory only and is bounded (peers per torrent, torrents, peers in all).  For
production scale use a real tracker such as opentracker.

::

    async with Tracker(allowed_info_hashes=[info_hash]) as tracker:   # 0.0.0.0, a free port
        url = tracker.announce_url("203.0.113.7")
        ...

Rules it follows, and why:

* **The peer's address is the connection's address.**  The ``ip`` parameter
  (and BEP 7's discouraged ``ipv4``/``ipv6``) is ignored: honouring it would let
  anyone make the tracker hand out a third party's address to every peer of
  a swarm, which turns the tracker into a DDoS amplifier.  A client that
  listens on IPv4 and IPv6 announces over both, as BEP 7 asks.  (Behind a
  reverse proxy every peer would have the proxy's address: run it directly.)
* **A peer is its peer id *and* its address.**  Two announces with the same
  peer id from different addresses are two entries (a multi-homed client's
  IPv4 and IPv6 announces, or a client whose address changed, the old entry
  expiring); so nobody can move or remove another host's entry without
  sending from that host's address.  A peer never gets itself back: every
  entry with its peer id is left out of its answer.
* **Raw bytes.**  ``info_hash`` and ``peer_id`` are arbitrary bytes; the query
  string is split on ``&`` and each ``key=value`` percent-decoded to bytes
  here (aiohttp's ``request.query`` decodes as UTF-8, which corrupts them).
  ``+`` is a literal ``+``, as in any URL query (clients escape every byte
  outside the unreserved set anyway).  The first occurrence of a key wins.
* **Errors are answers.**  A bad request gets a bencoded ``failure reason``
  with HTTP 200, which is what clients show to their user; nothing a client
  sends produces a 500 or stops the server.
* **Expiry.**  A peer that has not announced for two intervals is dropped,
  lazily on each request that touches its torrent and by a periodic sweep,
  both by the injected clock.
* **Events.**  ``started``, ``completed``, ``stopped``, ``empty`` (or none) per
  BEP 3, and ``paused`` (BEP 21, which libtorrent sends) as a regular announce.
  ``stopped`` removes the entry; ``completed`` counts a download once per entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from aiohttp import web

from ..metainfo.bencoding import encode

log = logging.getLogger(__name__)

__all__ = [
    "MAX_QUERY_LENGTH",
    "NOT_ALLOWED",
    "TrackedPeer",
    "Tracker",
    "peer_address",
]

#: Longest query string answered (longer ones get a failure reason).  Room for a
#: scrape of about fifty info-hashes; a real announce is a few hundred bytes.
MAX_QUERY_LENGTH: Final = 4096

# Request lines up to this long reach our handler, which answers an over-long
# query with a failure reason; past it aiohttp's parser answers 400 (its own
# default, 8190, would make a 5 KB query a 400 instead of a failure reason).
_MAX_REQUEST_LINE: Final = 64 * 1024

# Clients announce every half hour: an idle keep-alive connection is only a
# file descriptor held (aiohttp's default is an hour).
_KEEPALIVE_TIMEOUT: Final = 15.0

#: The failure reason for an info-hash that is not on the allow-list.
NOT_ALLOWED: Final = "torrent not allowed on this tracker"

_HASH_LENGTH: Final = 20
_MAX_COUNTER: Final = 2**63 - 1  # uploaded / downloaded / left, in bytes

# Event names on the wire -> what we do with them (None: a regular announce).
_EVENTS: Final[dict[bytes, str | None]] = {
    b"": None,
    b"empty": None,
    b"paused": None,
    b"started": "started",
    b"completed": "completed",
    b"stopped": "stopped",
}

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class TrackedPeer:
    """One peer of a swarm as the tracker knows it (see :meth:`Tracker.peers`)."""

    peer_id: bytes
    ip: str
    port: int
    left: int
    last_seen: float


@dataclass(frozen=True, slots=True)
class _Peer:
    peer_id: bytes
    address: _Address
    port: int
    left: int
    last_seen: float
    completed: bool  # this entry has announced ``completed`` (counted once)
    compact: bytes  # BEP 23 / BEP 7: address then port, network byte order

    @property
    def ipv6(self) -> bool:
        return self.address.version == 6


# A swarm's peers are keyed by (peer id, address): see the module docstring.
_Key = tuple[bytes, _Address]


class _Swarm:
    __slots__ = ("peers", "seeders", "downloaded")

    def __init__(self) -> None:
        # Insertion order is last-announce order (an announce re-inserts), so
        # the oldest entries are first: expiry and eviction pop from the front.
        self.peers: dict[_Key, _Peer] = {}
        self.seeders = 0
        self.downloaded = 0


class _Refusal(Exception):
    """A request the tracker answers with a ``failure reason``."""


def peer_address(remote: str) -> _Address:
    """The address a connection came from, IPv4-mapped IPv6 (``::ffff:a.b.c.d``) as IPv4."""
    address = ipaddress.ip_address(remote)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _split_query(raw_path: str) -> str:
    _, _, query = raw_path.partition("?")
    return query.partition("#")[0]


def _parse_query(query: str) -> list[tuple[bytes, bytes]]:
    """``key=value`` pairs, each side percent-decoded to raw bytes."""
    pairs: list[tuple[bytes, bytes]] = []
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        try:
            pairs.append((unquote_to_bytes(key), unquote_to_bytes(value)))
        except UnicodeError:
            raise _Refusal("query string is not ASCII") from None
    return pairs


def _uint(value: bytes, name: str, maximum: int = _MAX_COUNTER) -> int:
    # bytes.isdigit is ASCII only (str.isdigit would take "²"); the length
    # bound keeps int() cheap.
    if not value.isdigit() or len(value) > 20 or int(value) > maximum:
        raise _Refusal(f"{name} must be an integer from 0 to {maximum}")
    return int(value)


def _info_hash(value: bytes) -> bytes:
    if len(value) != _HASH_LENGTH:
        raise _Refusal(f"info_hash must be {_HASH_LENGTH} bytes, not {len(value)}")
    return value


def _failure(reason: str) -> web.Response:
    return _bencoded({"failure reason": reason})


def _bencoded(value: dict[Any, Any]) -> web.Response:
    return web.Response(body=encode(value), content_type="text/plain", headers={"Cache-Control": "no-cache"})


class Tracker:
    """An HTTP tracker on aiohttp's server (see the module docstring).

    ``interval``/``min_interval``: seconds, as told to clients; a peer silent
    for ``2 * interval`` is dropped.  ``allowed_info_hashes``: if given, only
    these torrents are tracked (:meth:`allow` / :meth:`disallow` change the
    list); if ``None`` the tracker is open to any info-hash, up to
    ``max_torrents``.  ``numwant`` defaults to ``default_numwant`` and is
    clamped to ``max_numwant``.  ``max_peers_per_torrent``: the oldest entry
    is dropped for a new one past this; ``max_peers``: in all torrents, new
    peers are refused past this.  ``clock``: seconds, for expiry (tests
    inject a fake one).
    """

    def __init__(
        self,
        *,
        interval: int = 1800,
        min_interval: int | None = None,
        allowed_info_hashes: Iterable[bytes] | None = None,
        max_numwant: int = 200,
        default_numwant: int = 50,
        clock: Callable[[], float] = time.monotonic,
        max_peers_per_torrent: int = 10_000,
        max_torrents: int = 10_000,
        max_peers: int = 100_000,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval}")
        if min_interval is not None and not 0 < min_interval <= interval:
            raise ValueError(f"min_interval must be from 1 to interval ({interval}), not {min_interval}")
        if max_numwant < 0 or default_numwant < 0:
            raise ValueError(f"numwant bounds must be non-negative, not {max_numwant} and {default_numwant}")
        if min(max_peers_per_torrent, max_torrents, max_peers) <= 0:
            raise ValueError("max_peers_per_torrent, max_torrents and max_peers must be positive")
        self.interval = interval
        self.min_interval = min_interval
        self.max_numwant = max_numwant
        self.default_numwant = min(default_numwant, max_numwant)
        self.max_peers_per_torrent = max_peers_per_torrent
        self.max_torrents = max_torrents
        self.max_peers = max_peers
        self._clock = clock
        self._rng = random.Random()
        self._allowed: set[bytes] | None = None
        self._swarms: dict[bytes, _Swarm] = {}
        self._peer_count = 0
        if allowed_info_hashes is not None:
            self._allowed = set()
            for info_hash in allowed_info_hashes:
                self.allow(info_hash)
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._port: int | None = None

    # ---------------------------------------------------------------- lifecycle

    async def start(self, host: str | Sequence[str] = "0.0.0.0", port: int = 0) -> None:
        """Listen on ``host`` (an address, or several: ``["0.0.0.0", "::"]``), on ``port``.

        Port 0 picks a free port, then every further host is bound to that
        same port.  Give literal addresses: a name that resolves to several
        addresses is bound on each, with port 0 possibly on different ports.
        """
        if self._runner is not None:
            raise RuntimeError("the tracker is already started")
        hosts = [host] if isinstance(host, str) else list(host)
        if not hosts:
            raise ValueError("no host to listen on")
        app = web.Application()
        app.router.add_get("/announce", self._handle_announce)
        app.router.add_get("/scrape", self._handle_scrape)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            keepalive_timeout=_KEEPALIVE_TIMEOUT,
            max_line_size=_MAX_REQUEST_LINE,
        )
        await runner.setup()
        try:
            for address in hosts:
                site = web.TCPSite(runner, address, port)
                await site.start()
                if port == 0:
                    port = int(runner.addresses[0][1])
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = port
        self._sweeper = asyncio.create_task(self._sweep_periodically(), name="tracker expiry")
        log.info("tracker listening on %s, port %d", ", ".join(hosts), port)

    async def close(self) -> None:
        """Stop listening (the peer lists are kept; the tracker cannot be started again)."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Tracker:
        """Start on the default host and a free port, unless :meth:`start` was called already."""
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The port the tracker listens on."""
        if self._port is None:
            raise RuntimeError("the tracker is not started")
        return self._port

    def announce_url(self, host: str = "127.0.0.1") -> str:
        """``http://HOST:PORT/announce``, an IPv6 address in brackets."""
        return f"http://{self._netloc(host)}/announce"

    def scrape_url(self, host: str = "127.0.0.1") -> str:
        """``http://HOST:PORT/scrape`` (BEP 48: the announce URL with ``announce`` → ``scrape``)."""
        return f"http://{self._netloc(host)}/scrape"

    def _netloc(self, host: str) -> str:
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"

    # ------------------------------------------------------------ torrents, peers

    def allow(self, info_hash: bytes) -> None:
        """Track ``info_hash`` (on an open tracker: list it in a full scrape even with no peers yet)."""
        if len(info_hash) != _HASH_LENGTH:
            raise ValueError(f"an info-hash is {_HASH_LENGTH} bytes, not {len(info_hash)}")
        info_hash = bytes(info_hash)
        if self._allowed is not None:
            self._allowed.add(info_hash)
        self._swarms.setdefault(info_hash, _Swarm())

    def disallow(self, info_hash: bytes) -> None:
        """Stop tracking ``info_hash`` and forget its peers and its counts.

        On an open tracker (no allow-list) this only forgets: the torrent is
        tracked again on its next announce.
        """
        if self._allowed is not None:
            self._allowed.discard(info_hash)
        swarm = self._swarms.pop(info_hash, None)
        if swarm is not None:
            self._peer_count -= len(swarm.peers)

    @property
    def allowed_info_hashes(self) -> frozenset[bytes] | None:
        """The allow-list, or ``None`` for an open tracker."""
        return None if self._allowed is None else frozenset(self._allowed)

    def peers(self, info_hash: bytes) -> list[TrackedPeer]:
        """The live peers of a torrent, oldest announce first."""
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            return []
        self._expire(swarm, self._clock())
        return [
            TrackedPeer(peer.peer_id, str(peer.address), peer.port, peer.left, peer.last_seen)
            for peer in swarm.peers.values()
        ]

    def _insert(self, swarm: _Swarm, key: _Key, peer: _Peer) -> None:
        swarm.peers[key] = peer
        swarm.seeders += peer.left == 0
        self._peer_count += 1

    def _remove(self, swarm: _Swarm, key: _Key) -> _Peer | None:
        peer = swarm.peers.pop(key, None)
        if peer is not None:
            swarm.seeders -= peer.left == 0
            self._peer_count -= 1
        return peer

    def _expire(self, swarm: _Swarm, now: float) -> None:
        deadline = now - 2 * self.interval
        while swarm.peers:
            key, oldest = next(iter(swarm.peers.items()))
            if oldest.last_seen >= deadline:
                break
            self._remove(swarm, key)

    def sweep(self) -> None:
        """Drop every expired peer now (also done periodically and on each request)."""
        now = self._clock()
        for swarm in self._swarms.values():
            self._expire(swarm, now)

    async def _sweep_periodically(self) -> None:
        period = min(float(self.interval), 300.0)
        while True:
            await asyncio.sleep(period)
            try:
                self.sweep()
            except Exception:  # a broken injected clock must not end the sweeps
                log.exception("tracker expiry sweep failed")

    def _swarm_for_announce(self, info_hash: bytes) -> _Swarm:
        swarm = self._swarms.get(info_hash)
        if swarm is not None:
            return swarm
        if self._allowed is not None:
            raise _Refusal(NOT_ALLOWED)  # allowed torrents have their swarm from allow()
        if len(self._swarms) >= self.max_torrents:
            # Make room from torrents nobody is in any longer (their counts go).
            self.sweep()
            for empty in [h for h, s in self._swarms.items() if not s.peers]:
                del self._swarms[empty]
            if len(self._swarms) >= self.max_torrents:
                raise _Refusal("this tracker tracks as many torrents as it can")
        swarm = self._swarms[info_hash] = _Swarm()
        return swarm

    # ---------------------------------------------------------------- handlers

    async def _handle_announce(self, request: web.Request) -> web.Response:
        return self._answer(request, self._announce)

    async def _handle_scrape(self, request: web.Request) -> web.Response:
        return self._answer(request, self._scrape)

    def _answer(
        self, request: web.Request, handler: Callable[[web.Request, list[tuple[bytes, bytes]]], dict[Any, Any]]
    ) -> web.Response:
        try:
            query = _split_query(request.raw_path)
            if len(query) > MAX_QUERY_LENGTH:
                raise _Refusal(f"query string longer than {MAX_QUERY_LENGTH} characters")
            return _bencoded(handler(request, _parse_query(query)))
        except _Refusal as refusal:
            log.debug("tracker refused %s from %s: %s", request.path, request.remote, refusal)
            return _failure(str(refusal))
        except Exception:
            log.exception("tracker failed on %s from %s", request.path, request.remote)
            return _failure("internal tracker error")

    def _announce(self, request: web.Request, pairs: list[tuple[bytes, bytes]]) -> dict[Any, Any]:
        fields = dict(reversed(pairs))  # the first occurrence of a key wins

        def required(name: str) -> bytes:
            value = fields.get(name.encode())
            if value is None:
                raise _Refusal(f"missing {name}")
            return value

        info_hash = _info_hash(required("info_hash"))
        peer_id = required("peer_id")
        if len(peer_id) != _HASH_LENGTH:
            raise _Refusal(f"peer_id must be {_HASH_LENGTH} bytes, not {len(peer_id)}")
        port = _uint(required("port"), "port", 65535)
        if port == 0:
            raise _Refusal("port must be an integer from 1 to 65535")
        left = _uint(required("left"), "left")
        for name in ("uploaded", "downloaded"):
            if name.encode() in fields:
                _uint(fields[name.encode()], name)
        event_name = fields.get(b"event", b"")
        if event_name not in _EVENTS:
            raise _Refusal("event must be started, completed, stopped or empty")
        event = _EVENTS[event_name]
        numwant = self.default_numwant
        if b"numwant" in fields:
            wanted = fields[b"numwant"]
            # Some clients send -1 for "the default".
            if not (wanted[:1] == b"-" and wanted[1:].isdigit()):
                numwant = min(_uint(wanted, "numwant"), self.max_numwant)
        compact = fields.get(b"compact", b"1") != b"0"
        no_peer_id = fields.get(b"no_peer_id", b"0") not in (b"0", b"")
        # ``ip``, ``ipv4``, ``ipv6``: ignored on purpose (module docstring).
        # ``key``, ``trackerid``: accepted; a peer is already its id and address.

        if request.remote is None:
            raise _Refusal("cannot tell the address this announce came from")
        try:
            address = peer_address(request.remote)
        except ValueError:
            raise _Refusal("cannot tell the address this announce came from") from None

        now = self._clock()
        key: _Key = (peer_id, address)
        if event == "stopped":
            swarm = self._swarms.get(info_hash)
            if swarm is None:
                if self._allowed is not None:
                    raise _Refusal(NOT_ALLOWED)
                swarm = _Swarm()  # not kept: a stopped peer does not make a torrent
            self._expire(swarm, now)
            self._remove(swarm, key)
            return self._announce_answer(swarm, [], compact, no_peer_id)

        swarm = self._swarm_for_announce(info_hash)
        self._expire(swarm, now)
        if key not in swarm.peers and self._peer_count >= self.max_peers:
            self.sweep()
            if self._peer_count >= self.max_peers:
                raise _Refusal("this tracker tracks as many peers as it can")
        previous = self._remove(swarm, key)
        completed = previous is not None and previous.completed
        if event == "completed" and not completed:
            swarm.downloaded += 1
            completed = True
        while len(swarm.peers) >= self.max_peers_per_torrent:
            self._remove(swarm, next(iter(swarm.peers)))
        compact_address = address.packed + port.to_bytes(2, "big")
        self._insert(swarm, key, _Peer(peer_id, address, port, left, now, completed, compact_address))

        others = [peer for peer in swarm.peers.values() if peer.peer_id != peer_id]
        chosen = others if numwant >= len(others) else self._rng.sample(others, numwant)
        return self._announce_answer(swarm, chosen, compact, no_peer_id)

    def _announce_answer(self, swarm: _Swarm, chosen: list[_Peer], compact: bool, no_peer_id: bool) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "interval": self.interval,
            "complete": swarm.seeders,
            "incomplete": len(swarm.peers) - swarm.seeders,
        }
        if self.min_interval is not None:
            answer["min interval"] = self.min_interval
        if compact:
            answer["peers"] = b"".join(peer.compact for peer in chosen if not peer.ipv6)
            peers6 = b"".join(peer.compact for peer in chosen if peer.ipv6)
            if peers6:
                answer["peers6"] = peers6
            return answer
        listed: list[dict[str, Any]] = []
        for peer in chosen:
            entry: dict[str, Any] = {"ip": str(peer.address), "port": peer.port}
            if not no_peer_id:
                entry["peer id"] = peer.peer_id
            listed.append(entry)
        answer["peers"] = listed
        return answer

    def _scrape(self, request: web.Request, pairs: list[tuple[bytes, bytes]]) -> dict[Any, Any]:
        requested = [_info_hash(value) for name, value in pairs if name == b"info_hash"]
        now = self._clock()
        if not requested:
            wanted = list(self._swarms)
        else:
            # Any valid info-hash gets an answer (zeros if unknown), except
            # one the allow-list leaves out.
            wanted = list(dict.fromkeys(requested))
            if self._allowed is not None:
                wanted = [info_hash for info_hash in wanted if info_hash in self._allowed]
        files: dict[bytes, dict[str, int]] = {}
        for info_hash in wanted:
            swarm = self._swarms.get(info_hash)
            if swarm is None:
                files[info_hash] = {"complete": 0, "incomplete": 0, "downloaded": 0}
                continue
            self._expire(swarm, now)
            files[info_hash] = {
                "complete": swarm.seeders,
                "incomplete": len(swarm.peers) - swarm.seeders,
                "downloaded": swarm.downloaded,
            }
        return {"files": files}
