"""The session: listen sockets, dialling and handshakes, the torrents, shared settings and services.

The session owns every socket.  It accepts through its
:class:`~pyowtorrent.engine.net.Network`, reads the remote's handshake with a
deadline and routes the connection to the torrent it names; it dials for
its torrents (:class:`~pyowtorrent.engine.services.Dialer`) and hands back a
connection whose handshake is done.  Junk where a handshake should be, a
timeout or a refused connection ends that one connection.
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
from ..errors import PyowtorrentError
from ..metainfo.torrent_file import Metainfo, load_metainfo
from ..storage.base import PieceStore
from ..storage.files import Storage
from ..tracker.peers import holder_of_text
from ..wire.connection import PeerConnection
from .clock import Clock, LoopClock
from .handshake import CONNECTION_FAILURES, PeerLink, open_stream, read_handshake
from .meters import RateLimiter
from .net import Address, Listener, Network, TcpNetwork
from .services import Disk, ThreadDisk, TorrentServices, TorrentSettings
from .torrent import Torrent

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


class Session:
    """Runs torrents on the current event loop.

    ``listen``: addresses to accept peers on (``"0.0.0.0"``, ``"::"``,
    ``"127.0.0.1"``…), or ``None`` to accept none; ``port`` 0 picks a free one.
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
        upload_slots: int = 4,
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
        clock: Clock | None = None,
        network: Network | None = None,
        disk: Disk | None = None,
        seed: int | None = None,
    ) -> None:
        self.listen = [listen] if isinstance(listen, str) else list(listen or [])
        self.port = port
        self.rng = random.Random(seed)
        self.peer_id = peer_id or make_peer_id(self.rng if seed is not None else None)
        if len(self.peer_id) != 20:
            raise ValueError("a peer id is 20 bytes")
        self.max_connections = max_connections
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
        )
        self.clock = clock or LoopClock()
        self.network = network or TcpNetwork()
        # One disk thread per core: hashing is CPU work, and every extra thread
        # costs hand-offs and wake-ups.
        self._own_disk = disk is None
        self.disk: Disk = disk or ThreadDisk(disk_threads or min(8, os.cpu_count() or 1))
        self.upload_limiter = RateLimiter(upload_rate_limit, self.clock)
        self._http: aiohttp.ClientSession | None = None
        self.own_addresses: set[Address] = set()  # found by connecting to ourselves
        # Incoming connections waiting for their handshake, oldest first.
        self._handshaking: dict[asyncio.StreamWriter, bytes] = {}  # -> the host it came from
        # Their tasks are asyncio's (made by the listen socket): close() ends them itself,
        # or the loop would cancel them on its way out and asyncio would print a traceback.
        self._accepting: set[asyncio.Task[None]] = set()
        self.torrents: dict[bytes, Torrent] = {}
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

    def _services(self) -> TorrentServices:
        return TorrentServices(
            settings=self.settings,
            clock=self.clock,
            disk=self.disk,
            dialer=self,
            budget=self,
            upload_limiter=self.upload_limiter,
            http=self.http_client,
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

    def http_client(self) -> aiohttp.ClientSession:
        """The aiohttp client session shared by the trackers (made on first use, in the loop)."""
        if self._http is None:
            import aiohttp

            self._http = aiohttp.ClientSession(headers={"User-Agent": self.settings.client_name})
        return self._http

    # -- ConnectionBudget ---------------------------------------------------------

    def can_connect(self) -> bool:
        # Web seeds hold connections too (an HTTP one each, while they fetch).
        return sum(len(t.peers) + t.swarm.web_seeds.num_connected() for t in self.torrents.values()) < self.max_connections

    # -- Dialer: outgoing connections -------------------------------------------------

    def is_self(self, address: Address) -> bool:
        return address in self.own_addresses

    async def dial(self, address: Address, conn: PeerConnection) -> PeerLink | None:
        if address in self.own_addresses:
            return None
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await open_stream(self.network, self.clock, address)
            writer.write(conn.handshake_bytes())
            data, hs = await read_handshake(reader, self.clock)
        except CONNECTION_FAILURES as exc:
            log.info("connecting to %s failed: %s", address, exc or type(exc).__name__)
            if writer is not None:
                writer.close()
            return None
        if hs.info_hash != conn.info_hash:
            log.debug("%s answered for another torrent", address)
        elif hs.peer_id == self.peer_id:
            log.debug("%s is ourselves", address)
            self.own_addresses.add(address)  # our own listen address: never again
        else:
            return PeerLink(reader, writer, address, hs, data, outgoing=True)
        writer.close()
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
            data, hs = await read_handshake(reader, self.clock)
        except CONNECTION_FAILURES:
            writer.close()
            return
        finally:
            self._handshaking.pop(writer, None)
            self._accepting.discard(task)
        torrent = self.torrents.get(hs.info_hash)
        if torrent is None or not self.can_connect():
            writer.close()
            return
        torrent.accept(PeerLink(reader, writer, (ip, int(peername[1])), hs, data, outgoing=False))

    async def close(self) -> None:
        """Stop every torrent (saving resume data), close the sockets, wait for the peers to go."""
        for listener in self._listeners:
            listener.close()
        for writer in list(self._handshaking):
            writer.close()  # a pending handshake read ends at once
        if self._accepting:
            await asyncio.wait(list(self._accepting))
        await asyncio.gather(*(t.stop() for t in list(self.torrents.values())))
        if self._http is not None:
            await self._http.close()
            self._http = None
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()
        if self._own_disk and isinstance(self.disk, ThreadDisk):
            await self.disk.shutdown()
