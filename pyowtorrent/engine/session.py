"""The session: listen sockets, dialling and handshakes, the torrents, shared settings and services.

The session owns every socket.  It accepts through its
:class:`~pyowtorrent.engine.net.Network`, reads the remote's handshake with a
deadline and routes the connection to the torrent it names; it dials for
its torrents (:class:`~pyowtorrent.engine.services.Dialer`) and hands back a
connection whose handshake is done.  Junk where a handshake should be, a
timeout or a refused connection ends that one connection.

Handshakes may be encrypted (MSE/PE), as ``encryption`` says: with the
default, ``"enabled"``, a peer that sends a key exchange gets one back, and
a dial that the remote hangs up on before its handshake is tried once more
the other way at once (plaintext first; encrypted first for peers that
needed it before).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .._version import __version__
from ..errors import MagnetError, MetainfoError, PyowtorrentError
from ..metainfo.magnet import Magnet, parse_magnet
from ..metainfo.torrent_file import Metainfo, load_metainfo, metainfo_from_info
from ..storage.base import PieceStore
from ..storage.files import Storage
from ..storage.resume import write_atomically
from ..tracker.peers import holder_of_text
from ..wire.connection import PeerConnection
from ..wire.mse import rc4_available, skey_hash
from .clock import Clock, LoopClock
from .magnet import MetadataFetch
from .handshake import (
    CONNECTION_FAILURES,
    ENCRYPTION_POLICIES,
    DialOrder,
    Encryption,
    HungUp,
    PeerLink,
    accept_handshake,
    dial_handshake,
)
from .http_client import HttpClient
from .meters import RateLimiter
from .net import Address, Listener, Network, TcpNetwork, source_addresses
from .services import Disk, ThreadDisk, TorrentServices, TorrentSettings
from .torrent import Torrent
from .webseed import web_client_session

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

__all__ = ["Session", "make_peer_id"]

# Incoming connections allowed to be waiting for their handshake at once; past
# this the oldest one waiting is dropped, so silent connections (slowloris)
# cannot keep a real peer out: a peer sends its handshake within a round trip.
MAX_PENDING_HANDSHAKES = 64
# ... and from one address: several clients behind one NAT, but not a flood.
MAX_PENDING_HANDSHAKES_PER_IP = 8
# Peers that took only an encrypted handshake, dialled encrypted first next
# time (as libtorrent remembers): a bounded memory, the oldest forgotten first.
MAX_REMEMBERED_ENCRYPTED = 4096


def make_peer_id(rng: random.Random | None = None) -> bytes:
    """BEP 20 Azureus-style: client 'PY' (unused by other clients we know of), version, random tail."""
    major, minor, patch = (__version__.split(".") + ["0", "0"])[:3]
    prefix = f"-PY{int(major) % 10}{int(minor) % 10}{int(patch) % 10}0-".encode()
    n = 20 - len(prefix)
    return prefix + (rng.randbytes(n) if rng is not None else secrets.token_bytes(n))


def resume_file(meta: Metainfo, save_path: Path, resume_dir: Path | None = None) -> Path:
    """Where a torrent's resume data is kept: ``resume_dir``, or ``.pyowtorrent`` in its save directory."""
    directory = resume_dir if resume_dir is not None else save_path / ".pyowtorrent"
    return directory / f"{meta.info_hash.hex()}.resume.json"


def fetched_torrent_file(info_hash: bytes, save_path: Path, resume_dir: Path | None = None) -> Path:
    """Where the ``.torrent`` of a magnet link is kept once its metadata is fetched: beside its resume data."""
    directory = resume_dir if resume_dir is not None else save_path / ".pyowtorrent"
    return directory / f"{info_hash.hex()}.torrent"


def load_fetched_torrent(info_hash: bytes, save_path: Path, resume_dir: Path | None = None) -> Metainfo | None:
    """The ``.torrent`` an earlier fetch of this magnet link kept, or ``None`` (none, unreadable, or not this one)."""
    try:
        meta = load_metainfo(fetched_torrent_file(info_hash, save_path, resume_dir))
    except MetainfoError:
        return None
    return meta if meta.info_hash == info_hash else None


class Session:
    """Runs torrents on the current event loop.

    ``listen``: addresses to accept peers on (``"0.0.0.0"``, ``"::"``,
    ``"127.0.0.1"``…), or ``None`` to accept none; ``port`` 0 picks a free one.
    Peer dials, announces and web seed requests leave from the specific
    listen address of their family, if there is one (a wildcard leaves the
    choice to the kernel): trackers then record the address we listen on.
    ``announce_ip`` asks trackers to hand out that address for us instead
    (BEP 3's ``ip``; for a host behind NAT).
    Resume data goes to ``resume_dir`` (default: ``.pyowtorrent`` in each
    torrent's save directory).  ``upload_rate_limit`` caps what all torrents
    send, in bytes per second (0: no cap).  ``clock``, ``network``, ``disk``
    and ``seed`` replace the engine's time, sockets, disk executor and
    randomness (the swarm simulator's virtual ones); nothing else changes.
    """

    def __init__(
        self,
        *,
        listen: str | Sequence[str] | None = ("0.0.0.0", "::"),
        port: int = 0,
        peer_id: bytes | None = None,
        upload_slots: int = 8,
        max_connections: int = 200,
        max_connections_per_torrent: int = 50,
        max_connections_per_ip: int = 8,
        resume_dir: str | os.PathLike[str] | None = None,
        disk_threads: int | None = None,
        upload_rate_limit: int = 0,
        request_timeout: float = 20.0,
        reconnect_delay: float = 5.0,
        tracker_timeout: float = 30.0,
        udp_retransmit_base: float = 15.0,
        announce_ip: str | None = None,
        encryption: Encryption = "enabled",
        clock: Clock | None = None,
        network: Network | None = None,
        disk: Disk | None = None,
        seed: int | None = None,
    ) -> None:
        self.listen = [listen] if isinstance(listen, str) else list(listen or [])
        # Where outgoing traffic leaves from: the specific listen address of each family.
        self.source_addresses = source_addresses(self.listen)
        self.port = port
        self.rng = random.Random(seed)
        self.peer_id = peer_id or make_peer_id(self.rng if seed is not None else None)
        if len(self.peer_id) != 20:
            raise ValueError("a peer id is 20 bytes")
        self.max_connections = max_connections
        self.encryption = _encryption_policy(encryption)
        # Key pairs and pads: the system's randomness, or the seed's for a reproducible (simulated) run.
        self._mse_random = random.Random(f"{seed}/mse").randbytes if seed is not None else secrets.token_bytes
        self._dial_order = DialOrder(self.encryption, MAX_REMEMBERED_ENCRYPTED)
        self.resume_dir = Path(resume_dir) if resume_dir is not None else None
        self.settings = TorrentSettings(
            peer_id=self.peer_id,
            client_name=f"pyowtorrent {__version__}",
            upload_slots=upload_slots,
            max_connections_per_torrent=max_connections_per_torrent,
            max_connections_per_ip=max_connections_per_ip,
            request_timeout=request_timeout,
            reconnect_delay=reconnect_delay,
            tracker_timeout=tracker_timeout,
            udp_retransmit_base=udp_retransmit_base,
            announce_key=self.rng.getrandbits(32),
            announce_ip=announce_ip,
            source_addresses=self.source_addresses,
        )
        self.clock = clock or LoopClock()
        self.network = network or TcpNetwork(bind=self.source_addresses)
        # One disk thread per core: hashing is CPU work, and every extra thread
        # costs hand-offs and wake-ups.
        self._own_disk = disk is None
        self.disk: Disk = disk or ThreadDisk(disk_threads or min(8, os.cpu_count() or 1))
        self.upload_limiter = RateLimiter(upload_rate_limit, self.clock)
        self.http = HttpClient(self.settings.client_name, self.source_addresses)  # the trackers'
        self._web: aiohttp.ClientSession | None = None
        self.own_addresses: set[Address] = set()  # found by connecting to ourselves
        # Incoming connections waiting for their handshake, oldest first.
        self._handshaking: dict[asyncio.StreamWriter, bytes] = {}  # -> the host it came from
        # Their tasks are asyncio's (made by the listen socket): close() ends them itself,
        # or the loop would cancel them on its way out and asyncio would print a traceback.
        self._accepting: set[asyncio.Task[None]] = set()
        self.torrents: dict[bytes, Torrent] = {}
        self._fetches: dict[bytes, MetadataFetch] = {}  # magnet links whose metadata is on its way
        self._listeners: list[Listener] = []
        self.listen_port = 0

    async def __aenter__(self) -> Session:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the listen sockets.  IPv4 and IPv6 share one port."""
        port = self.port
        for host in self.listen:
            try:
                listener = await self.network.listen(self._accept, host, port)
            except OSError as exc:
                if host == "::" and self._listeners:
                    log.info("no IPv6 listen socket: %s", exc)  # an IPv4-only machine
                    continue
                raise PyowtorrentError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
            self._listeners.append(listener)
            if port == 0:
                port = listener.addresses()[0][1]
        self.listen_port = port

    @property
    def listen_addresses(self) -> list[Address]:
        return [a for listener in self._listeners for a in listener.addresses()]

    async def add_torrent(
        self,
        torrent: Metainfo | str | os.PathLike[str],
        save_path: str | os.PathLike[str] = ".",
        *,
        peers: Sequence[tuple[str, int]] = (),
        file_priorities: Sequence[int] | None = None,
        sequential: bool = False,
        trackers: Sequence[Sequence[str]] | None = None,
        storage: PieceStore | None = None,
    ) -> Torrent:
        """Add a torrent and start it: check the files already there, then download or seed.

        ``trackers`` (tiers of URLs) replaces the torrent's own list when given.
        ``storage`` replaces the files under ``save_path`` (and then no resume
        data is kept): :class:`~pyowtorrent.storage.memory.MemoryStorage`, say.
        """
        meta = torrent if isinstance(torrent, Metainfo) else load_metainfo(torrent)
        if meta.info_hash in self.torrents:
            raise PyowtorrentError(f"{meta.name}: this torrent is already in the session")
        save = Path(save_path)
        resume_path = None
        if storage is None:
            storage = Storage(meta, save)
            resume_path = resume_file(meta, save, self.resume_dir)
        t = Torrent(
            self._services(),
            meta,
            storage,
            save_path=save,
            resume_path=resume_path,
            file_priorities=file_priorities,
            sequential=sequential,
            trackers=trackers,
        )
        self.torrents[meta.info_hash] = t
        for host, p in peers:
            t.add_peer(host, p)
        await t.start()
        return t

    async def add_magnet(
        self,
        magnet: Magnet | str,
        save_path: str | os.PathLike[str] = ".",
        *,
        peers: Sequence[tuple[str, int]] = (),
        timeout: float | None = None,
        file_priorities: Sequence[int] | None = None,
        sequential: bool = False,
        trackers: Sequence[Sequence[str]] | None = None,
    ) -> Torrent:
        """Add a torrent by its magnet link: fetch its metadata from peers (BEP 9), then start it.

        Peers: the magnet's trackers (or ``trackers``), its ``x.pe``, ``peers``, PEX.  The
        ``.torrent`` is kept (:func:`fetched_torrent_file`): the same link again fetches nothing.
        ``so=`` selects files unless ``file_priorities`` is given.  Errors: as
        :meth:`MetadataFetch.run <pyowtorrent.engine.magnet.MetadataFetch.run>`, and
        :class:`~pyowtorrent.errors.MetainfoError` for metadata that is no torrent we can use.
        """
        m = parse_magnet(magnet) if isinstance(magnet, str) else magnet
        if m.info_hash is None:
            raise MagnetError("the magnet link has only a v2 info-hash (urn:btmh), and pyowtorrent speaks v1 torrents")
        info_hash = m.info_hash
        if info_hash in self.torrents or info_hash in self._fetches:
            raise PyowtorrentError(f"{m.display_name or info_hash.hex()}: this torrent is already in the session")
        save = Path(save_path)
        known = [*peers, *m.peers]
        meta = await self.disk.run(load_fetched_torrent, info_hash, save, self.resume_dir)
        if meta is None:
            tiers = trackers if trackers is not None else [[t] for t in m.trackers]
            fetch = self._fetches[info_hash] = MetadataFetch(info_hash, m.display_name, self._services(), tiers, known)
            try:
                await fetch.run(timeout)
            finally:
                del self._fetches[info_hash]
            meta = metainfo_from_info(fetch.metadata, trackers=m.trackers, web_seeds=m.web_seeds)
            await self.disk.run(write_atomically, fetched_torrent_file(info_hash, save, self.resume_dir), meta.to_bytes())
            # The peers that served it first; none that lied about it.
            known = [a for a in [*fetch.addresses(), *known] if a not in fetch.dropped]
        if file_priorities is None and m.select_only is not None:
            file_priorities = [1 if i in m.select_only else 0 for i in range(len(meta.files))]
        peers = list(dict.fromkeys(known))
        return await self.add_torrent(
            meta, save, peers=peers, file_priorities=file_priorities, sequential=sequential, trackers=trackers
        )

    def _services(self) -> TorrentServices:
        return TorrentServices(
            settings=self.settings,
            clock=self.clock,
            disk=self.disk,
            dialer=self,
            budget=self,
            upload_limiter=self.upload_limiter,
            http=self.http,
            web=self.web_session,
            listen_port=lambda: self.listen_port,
            rng=random.Random(self.rng.getrandbits(64)),
        )

    async def remove_torrent(self, torrent: Torrent, *, delete_files: bool = False) -> None:
        if self.torrents.get(torrent.meta.info_hash) is not torrent:
            return
        del self.torrents[torrent.meta.info_hash]
        await torrent.stop()
        if delete_files:
            await self.disk.run(torrent.storage.delete_files)
            if torrent.resume_path is not None:
                await self.disk.run(torrent.resume_path.unlink, True)

    def web_session(self) -> aiohttp.ClientSession:
        """The aiohttp session the web seeds share (made on first use, in the loop)."""
        if self._web is None:
            self._web = web_client_session(self.settings.client_name, self.source_addresses)
        return self._web

    # -- ConnectionBudget ---------------------------------------------------------

    def can_connect(self) -> bool:
        # Web seeds hold connections too (an HTTP one each, while they fetch).
        held = sum(len(t.peers) + t.swarm.web_seeds.num_connected() for t in self.torrents.values())
        return held + sum(len(f.sources) for f in self._fetches.values()) < self.max_connections

    # -- Dialer: outgoing connections -------------------------------------------------

    def is_self(self, address: Address) -> bool:
        return address in self.own_addresses

    async def dial(self, address: Address, conn: PeerConnection) -> PeerLink | None:
        if address in self.own_addresses:
            return None
        handshake = conn.handshake_bytes()
        link: PeerLink | None = None
        for encrypt in self._dial_order.handshakes(address):
            try:
                link = await dial_handshake(
                    self.network, self.clock, address, handshake, conn.info_hash, encrypt, self._mse_random
                )
            except HungUp as exc:
                log.debug("%s: %s", address, exc)
                continue  # perhaps it wants the other kind of handshake
            except CONNECTION_FAILURES as exc:
                log.info("connecting to %s failed: %s", address, exc or type(exc).__name__)
                return None
            break
        if link is None:
            log.info("connecting to %s failed: it hung up on every kind of handshake", address)
            return None
        self._dial_order.remember(address, link.encryption is not None)
        hs = link.handshake
        if hs.info_hash != conn.info_hash:
            log.debug("%s answered for another torrent", address)
        elif hs.peer_id == self.peer_id:
            log.debug("%s is ourselves", address)
            self.own_addresses.add(address)  # our own listen address: never again
        else:
            return link
        link.writer.close()
        return None

    # -- incoming connections -----------------------------------------------------------

    @property
    def handshaking(self) -> int:
        """Incoming connections waiting for their handshake."""
        return len(self._handshaking)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        ip = str(peername[0])
        host = holder_of_text(ip)  # an IPv6 host counts as its /64
        if sum(1 for other in self._handshaking.values() if other == host) >= MAX_PENDING_HANDSHAKES_PER_IP:
            log.info(
                "incoming connection from %s refused: %d handshakes already pending from it",
                ip,
                MAX_PENDING_HANDSHAKES_PER_IP,
            )
            writer.close()
            return
        if len(self._handshaking) >= MAX_PENDING_HANDSHAKES:
            oldest = next(iter(self._handshaking))
            del self._handshaking[oldest]
            oldest.close()  # its read ends at once; the newcomer takes its place
        self._handshaking[writer] = host
        task = asyncio.current_task()
        assert task is not None
        self._accepting.add(task)
        try:
            link = await accept_handshake(
                reader, writer, (ip, int(peername[1])), self.clock, self.encryption, self._find_skey, self._mse_random
            )
        except CONNECTION_FAILURES as exc:
            log.debug("incoming connection from %s refused: %s", ip, exc or type(exc).__name__)
            writer.close()
            return
        finally:
            self._handshaking.pop(writer, None)
            self._accepting.discard(task)
        fetch = self._fetches.get(link.handshake.info_hash)
        if fetch is not None and self.can_connect():
            fetch.accept(link)
            return
        torrent = self.torrents.get(link.handshake.info_hash)
        if torrent is None or not self.can_connect():
            why = "no such torrent " + link.handshake.info_hash.hex() if torrent is None else "connection budget full"
            log.info("incoming connection from %s refused: %s", ip, why)
            link.writer.close()
            return
        torrent.accept(link)

    def _find_skey(self, req2_hash: bytes) -> bytes | None:
        """The torrent an encrypted handshake names by HASH('req2', info-hash)."""
        return next((ih for ih in [*self.torrents, *self._fetches] if skey_hash(ih) == req2_hash), None)

    async def close(self) -> None:
        """Stop every torrent (saving resume data), close the sockets, wait for the peers to go."""
        for listener in self._listeners:
            listener.close()
        for writer in list(self._handshaking):
            writer.close()  # a pending handshake read ends at once
        if self._accepting:
            await asyncio.wait(list(self._accepting))
        for fetch in list(self._fetches.values()):
            fetch.stop("the session closed")
        await asyncio.gather(*(t.stop() for t in list(self.torrents.values())))
        if self._web is not None:
            await self._web.close()
            self._web = None
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()
        if self._own_disk and isinstance(self.disk, ThreadDisk):
            await self.disk.shutdown()


def _encryption_policy(encryption: str) -> Encryption:
    """``encryption`` checked; "required" also against what this machine can do."""
    for policy in ENCRYPTION_POLICIES:
        if encryption == policy:
            break
    else:
        raise ValueError(f"encryption {encryption!r}: one of {', '.join(ENCRYPTION_POLICIES)}")
    # Only a session that requires encryption checks for RC4 now (importing ``cryptography``
    # costs every start-up ~8 ms): one that merely enables it finds out at its first encrypted
    # handshake, which then fails alone (see :func:`~pyowtorrent.wire.mse.rc4_available`).
    if policy == "required" and not rc4_available():
        raise PyowtorrentError("encryption is required, but this cryptography library cannot run RC4")
    return policy
