"""An embedded HTTP tracker: BEP 3 announce, BEP 23 compact peers, BEP 7 ``peers6``, BEP 48 scrape.

This is a convenience for self-hosted, single-site distribution: a maintainer
who seeds a dataset can run the tracker in the same process (or beside it)
and put :meth:`Tracker.announce_url` in the ``.torrent``.  Its state lives in
memory only and is bounded (peers per torrent, torrents, peers in all), in a
way that one host cannot fill for everybody else (below).  For production
scale use a real tracker such as opentracker.

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

Limits against abuse, and why (issue 9).  A *host* here is an IPv4 address,
or an IPv6 /64 (an IPv6 host has a whole /64 to pick addresses from):

* **A few entries per host per torrent** (``max_peers_per_address``, 4):
  several clients behind one NAT are legitimate, thousands of peer ids from
  one host are not.  A new peer id from a host at its cap replaces that
  host's own least recently announced entry, never another host's.
* **A full torrent sheds a random entry** (``max_peers_per_torrent``), not
  the oldest, so a flood of new entries cannot flush out the peers that were
  there first; an answer's peers are a random sample (``rng``, seeded in
  tests).
* **A full table takes from the biggest holder.**  A host may be the only
  one in at most ``max_torrents_per_address`` torrents (1000); past that its
  new info-hashes are refused.  When the torrent table (``max_torrents``) is
  full, a new torrent replaces a torrent nobody is in, else the oldest
  torrent of the host that is alone in the most; when the peer table
  (``max_peers``) is full, a new entry replaces the oldest entry of the host
  holding the most.  Either only if that host would still hold more than the
  newcomer: among honest hosts with a few each, a full table refuses.  An
  allow-listed tracker makes no torrents from announces at all.
* **Bounded work per request.**  Queries are at most 4 KiB (a failure
  reason past it), request lines 64 KiB, header lines 8 KiB, 64 headers (a
  400 past them, logged in one line, never a traceback); ``numwant`` is clamped;
  an answer draws its peers without a pass over the torrent; a full scrape is
  built at most every 30 seconds and served from that copy meanwhile; idle
  connections close after 15 seconds.

Private torrents (BEP 27), when mounted with a :class:`KeyGate` (the upload
service's passkeys, :mod:`.passkeys`):

* **A private torrent is tracked only for a passkey.**  The passkey is the
  ``pk`` parameter of the query (``/announce?pk=KEY``: the path stays
  ``/announce``, which libtorrent requires of a tracker on loopback, and
  ``pk`` is none of the parameters a client adds); the gate says which
  info-hashes are private and which passkeys are good.  An announce of a
  private torrent without ``pk``, or any announce whose ``pk`` the gate
  refuses, gets a ``failure reason`` and is not recorded: no entry, no peers.
  The key is checked on every announce, so a revoked one fails from the next
  announce on.
* **Scrapes** without ``pk`` leave private torrents out (a full scrape names
  no private info-hash); a scrape with a good ``pk`` has them all.

The swarms themselves (peers, expiry, bounds) are kept by
:class:`~pyowtorrent.service.swarms.SwarmRegistry`, which knows nothing of
HTTP; :class:`Tracker` parses requests, answers them and runs the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Final, Protocol
from urllib.parse import unquote_to_bytes

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..metainfo.bencoding import encode
from .swarms import (
    HASH_LENGTH,
    NOT_ALLOWED,
    Address,
    AnnounceEvent,
    PeerEntry,
    Refusal,
    SwarmRegistry,
    SwarmStats,
    TrackedPeer,
)

log = logging.getLogger(__name__)

__all__ = [
    "MAX_QUERY_LENGTH",
    "NOT_ALLOWED",
    "PRIVATE_TORRENT",
    "KeyGate",
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
# A client sends a handful of short headers.  Set here rather than left to
# aiohttp, whose defaults changed (older releases allowed 32 768 headers).
_MAX_HEADER_LINE: Final = 8190
_MAX_HEADERS: Final = 64

# Clients announce every half hour: an idle keep-alive connection is only a
# file descriptor held (aiohttp's default is an hour).
_KEEPALIVE_TIMEOUT: Final = 15.0

_MAX_COUNTER: Final = 2**63 - 1  # uploaded / downloaded / left, in bytes

# A full scrape is a pass over every torrent and an answer of ~70 bytes each:
# it is built at most this often (seconds, by the injected clock) and the same
# bytes served meanwhile.  Nobody needs fresher statistics of every torrent.
_FULL_SCRAPE_CACHE: Final = 30.0

# aiohttp logs a request it cannot parse (a request line or header past its
# limit, bytes not allowed in a URL, not HTTP at all) as an ERROR with a
# traceback, on the logger we give it.  That is the client's fault, not ours:
# one line at INFO at most (DEBUG stays DEBUG), naming the client and the rule.
_http_log = logging.getLogger(f"{__name__}.http")


class _MalformedRequests(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            what = " ".join(exc.message.split()) or type(exc).__name__
            what = "".join(c if c.isprintable() else "?" for c in what[:120])
            record.msg = "tracker refused a malformed HTTP request from %s: %s"
            record.args = (remote, what)
            record.exc_info = record.exc_text = None
            if record.levelno > logging.INFO:
                record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


_http_log.addFilter(_MalformedRequests())

# Event names on the wire -> what we do with them (None: a regular announce).
_EVENTS: Final[dict[bytes, AnnounceEvent]] = {
    b"": None,
    b"empty": None,
    b"paused": None,
    b"started": "started",
    b"completed": "completed",
    b"stopped": "stopped",
}


def peer_address(remote: str) -> Address:
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
            raise Refusal("query string is not ASCII") from None
    return pairs


def _uint(value: bytes, name: str, maximum: int = _MAX_COUNTER) -> int:
    # bytes.isdigit is ASCII only (str.isdigit would take "²"); the length
    # bound keeps int() cheap.
    if not value.isdigit() or len(value) > 20 or int(value) > maximum:
        raise Refusal(f"{name} must be an integer from 0 to {maximum}")
    return int(value)


def _info_hash(value: bytes) -> bytes:
    if len(value) != HASH_LENGTH:
        raise Refusal(f"info_hash must be {HASH_LENGTH} bytes, not {len(value)}")
    return value


#: The failure reason of an announce of a private torrent at the plain URL.
PRIVATE_TORRENT: Final = "private torrent: announce at the tracker URL of your own .torrent, which carries your passkey"


class KeyGate(Protocol):
    """Which torrents are private, and which passkeys open them (the upload service's passkeys)."""

    def is_private(self, info_hash: bytes) -> bool:
        """Whether ``info_hash`` is tracked only for announces that carry a good passkey."""
        ...

    def refusal(self, passkey: str) -> str | None:
        """``None`` for a good passkey, else the failure reason to answer (never quoting the key)."""
        ...


def _keyed(gate: KeyGate | None, passkey: bytes | None, info_hash: bytes | None) -> bool:
    """Whether ``pk`` is a good passkey; :class:`Refusal` for a bad one, or for a private ``info_hash`` without one."""
    if gate is None:
        return False
    if passkey is not None:
        refusal = gate.refusal(passkey.decode("utf-8", "replace"))
        if refusal is not None:
            raise Refusal(refusal)
        return True
    if info_hash is not None and gate.is_private(info_hash):
        raise Refusal(PRIVATE_TORRENT)
    return False


def _response(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="text/plain", headers={"Cache-Control": "no-cache"})


class Tracker:
    """An HTTP tracker on aiohttp's server (see the module docstring).

    ``interval``/``min_interval``: seconds, as told to clients; a peer silent
    for ``2 * interval`` is dropped.  ``allowed_info_hashes``: if given, only
    these torrents are tracked (:meth:`allow` / :meth:`disallow` change the
    list); if ``None`` the tracker is open to any info-hash, up to
    ``max_torrents``, of which one host may be alone in at most
    ``max_torrents_per_address``.  ``numwant`` defaults to
    ``default_numwant`` and is clamped to ``max_numwant``.
    ``max_peers_per_torrent``: a random entry is dropped for a new one past
    this; ``max_peers_per_address``: entries of one host in one torrent, its
    own oldest dropped for a new one past this; ``max_peers``: in all
    torrents.  What a full table does is in the module docstring.
    ``clock``: seconds, for expiry (tests inject a fake one); ``rng``: which
    entry a full torrent drops, which peers an answer gets (tests seed one).
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
        max_peers_per_address: int = 4,
        max_torrents: int = 10_000,
        max_torrents_per_address: int = 1000,
        max_peers: int = 100_000,
        rng: random.Random | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval}")
        if min_interval is not None and not 0 < min_interval <= interval:
            raise ValueError(f"min_interval must be from 1 to interval ({interval}), not {min_interval}")
        if max_numwant < 0 or default_numwant < 0:
            raise ValueError(f"numwant bounds must be non-negative, not {max_numwant} and {default_numwant}")
        bounds = (max_peers_per_torrent, max_peers_per_address, max_torrents, max_torrents_per_address, max_peers)
        if min(bounds) <= 0:
            raise ValueError(f"the max_ bounds must be positive, not {bounds}")
        self.min_interval = min_interval
        self.max_numwant = max_numwant
        self.default_numwant = min(default_numwant, max_numwant)
        self._swarms = SwarmRegistry(
            interval=interval,
            clock=clock,
            allowed_info_hashes=allowed_info_hashes,
            max_peers_per_torrent=max_peers_per_torrent,
            max_peers_per_address=max_peers_per_address,
            max_torrents=max_torrents,
            max_torrents_per_address=max_torrents_per_address,
            max_peers=max_peers,
            rng=rng,
        )
        self._clock = clock
        self._full_scrape: dict[bool, tuple[float, bytes]] = {}  # keyed or not: built at, bencoded
        self._gate: KeyGate | None = None
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
            max_field_size=_MAX_HEADER_LINE,
            max_headers=_MAX_HEADERS,
            logger=_http_log,
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

    def mount(self, app: web.Application, *, gate: KeyGate | None = None) -> None:
        """Serve ``/announce`` and ``/scrape`` from ``app``, another server's application, instead of :meth:`start`.

        The upload service answers announces on its own port this way.  The
        expiry sweeps run while ``app`` runs; the server's limits are that
        server's to set (:meth:`start`'s are in the module docstring), and
        :attr:`port` and :meth:`announce_url` are :meth:`start`'s only.  With
        a ``gate``, private torrents are tracked for a passkey only (module docstring).
        """
        if self._runner is not None:
            raise RuntimeError("the tracker is already started")
        self._gate = gate
        app.router.add_get("/announce", self._handle_announce)
        app.router.add_get("/scrape", self._handle_scrape)
        app.cleanup_ctx.append(self._sweeping)

    async def _sweeping(self, app: web.Application) -> AsyncIterator[None]:
        self._sweeper = asyncio.create_task(self._sweep_periodically(), name="tracker expiry")
        yield
        await self.close()

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

    # The interval and the bounds are the registry's, read-only here: they
    # are kept in one place so they cannot disagree.
    @property
    def interval(self) -> int:
        return self._swarms.interval

    @property
    def max_peers_per_torrent(self) -> int:
        return self._swarms.max_peers_per_torrent

    @property
    def max_peers_per_address(self) -> int:
        return self._swarms.max_peers_per_address

    @property
    def max_torrents(self) -> int:
        return self._swarms.max_torrents

    @property
    def max_torrents_per_address(self) -> int:
        return self._swarms.max_torrents_per_address

    @property
    def max_peers(self) -> int:
        return self._swarms.max_peers

    def allow(self, info_hash: bytes) -> None:
        """Track ``info_hash`` (on an open tracker: list it in a full scrape even with no peers yet)."""
        self._swarms.allow(info_hash)
        self._full_scrape.clear()

    def disallow(self, info_hash: bytes) -> None:
        """Stop tracking ``info_hash`` and forget its peers and its counts.

        On an open tracker (no allow-list) this only forgets: the torrent is
        tracked again on its next announce.
        """
        self._swarms.disallow(info_hash)
        self._full_scrape.clear()

    @property
    def allowed_info_hashes(self) -> frozenset[bytes] | None:
        """The allow-list, or ``None`` for an open tracker."""
        return self._swarms.allowed_info_hashes

    def peers(self, info_hash: bytes) -> list[TrackedPeer]:
        """The live peers of a torrent, oldest announce first."""
        return self._swarms.peers(info_hash)

    def sweep(self) -> None:
        """Drop every expired peer now (also done periodically and on each request)."""
        self._swarms.sweep()

    async def _sweep_periodically(self) -> None:
        period = min(float(self.interval), 300.0)
        while True:
            await asyncio.sleep(period)
            try:
                self.sweep()
            except Exception:  # a broken injected clock must not end the sweeps
                log.exception("tracker expiry sweep failed")

    # ---------------------------------------------------------------- handlers

    async def _handle_announce(self, request: web.Request) -> web.Response:
        return self._answer(request, self._announce)

    async def _handle_scrape(self, request: web.Request) -> web.Response:
        return self._answer(request, self._scrape)

    def _answer(
        self, request: web.Request, handler: Callable[[web.Request, list[tuple[bytes, bytes]]], bytes]
    ) -> web.Response:
        try:
            query = _split_query(request.raw_path)
            if len(query) > MAX_QUERY_LENGTH:
                raise Refusal(f"query string longer than {MAX_QUERY_LENGTH} characters")
            return _response(handler(request, _parse_query(query)))
        except Refusal as refusal:
            log.debug("tracker refused %s from %s: %s", request.path, request.remote, refusal)
            return _response(encode({"failure reason": str(refusal)}))
        except Exception:
            log.exception("tracker failed on %s from %s", request.path, request.remote)
            return _response(encode({"failure reason": "internal tracker error"}))

    def _announce(self, request: web.Request, pairs: list[tuple[bytes, bytes]]) -> bytes:
        fields = dict(reversed(pairs))  # the first occurrence of a key wins

        def required(name: str) -> bytes:
            value = fields.get(name.encode())
            if value is None:
                raise Refusal(f"missing {name}")
            return value

        info_hash = _info_hash(required("info_hash"))
        _keyed(self._gate, fields.get(b"pk"), info_hash)
        peer_id = required("peer_id")
        if len(peer_id) != HASH_LENGTH:
            raise Refusal(f"peer_id must be {HASH_LENGTH} bytes, not {len(peer_id)}")
        port = _uint(required("port"), "port", 65535)
        if port == 0:
            raise Refusal("port must be an integer from 1 to 65535")
        left = _uint(required("left"), "left")
        for name in ("uploaded", "downloaded"):
            if name.encode() in fields:
                _uint(fields[name.encode()], name)
        event_name = fields.get(b"event", b"")
        if event_name not in _EVENTS:
            raise Refusal("event must be started, completed, stopped or empty")
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
            raise Refusal("cannot tell the address this announce came from")
        try:
            address = peer_address(request.remote)
        except ValueError:
            raise Refusal("cannot tell the address this announce came from") from None

        stats, chosen = self._swarms.announce(info_hash, peer_id, address, port, left, event, numwant)
        return encode(self._announce_answer(stats, chosen, compact, no_peer_id))

    def _announce_answer(
        self, stats: SwarmStats, chosen: list[PeerEntry], compact: bool, no_peer_id: bool
    ) -> dict[str, Any]:
        answer: dict[str, Any] = {"interval": self.interval, "complete": stats.complete, "incomplete": stats.incomplete}
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

    def _scrape(self, request: web.Request, pairs: list[tuple[bytes, bytes]]) -> bytes:
        keyed = _keyed(self._gate, next((v for k, v in pairs if k == b"pk"), None), None)
        requested = [_info_hash(value) for name, value in pairs if name == b"info_hash"]
        if requested:
            return self._scrape_answer(requested, keyed)
        now = self._clock()
        built = self._full_scrape.get(keyed)
        if built is None or not 0 <= now - built[0] < _FULL_SCRAPE_CACHE:
            built = self._full_scrape[keyed] = (now, self._scrape_answer([], keyed))
        return built[1]

    def _scrape_answer(self, info_hashes: list[bytes], keyed: bool) -> bytes:
        gate = None if keyed else self._gate  # a good passkey sees private torrents too
        files = {
            info_hash: {"complete": stats.complete, "incomplete": stats.incomplete, "downloaded": stats.downloaded}
            for info_hash, stats in self._swarms.scrape(info_hashes).items()
            if gate is None or not gate.is_private(info_hash)
        }
        return encode({"files": files})
