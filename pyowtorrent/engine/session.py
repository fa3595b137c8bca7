"""The session: one listen socket (or a few), the torrents, shared settings and the disk worker pool."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from .._version import __version__
from ..errors import ProtocolError, PyowtorrentError
from ..metainfo.torrent_file import Metainfo, load_metainfo
from .torrent import HANDSHAKE_TIMEOUT, Torrent, _read_handshake
from ..wire import parse_handshake

log = logging.getLogger(__name__)

__all__ = ["Session"]

# Incoming connections allowed to be waiting for their handshake at once.
MAX_PENDING_HANDSHAKES = 64


class RateLimiter:
    """A token bucket shared by every peer of the session; 0 bytes/s means no limit."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._tokens = float(rate)
        self._stamp = 0.0

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            self._tokens = min(float(self.rate), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= min(n, self.rate):
                self._tokens -= n
                return
            await asyncio.sleep((min(n, self.rate) - self._tokens) / self.rate)


def make_peer_id() -> bytes:
    """BEP 20 Azureus-style: client 'PY' (unused by other clients we know of), version, random tail."""
    major, minor, patch = (__version__.split(".") + ["0", "0"])[:3]
    prefix = f"-PY{int(major) % 10}{int(minor) % 10}{int(patch) % 10}0-".encode()
    return prefix + secrets.token_bytes(20 - len(prefix))


class Session:
    """Runs torrents on the current event loop.

    ``listen``: addresses to accept peers on (``"0.0.0.0"``, ``"::"``,
    ``"127.0.0.1"``…), or ``None`` to accept none; ``port`` 0 picks a free one.
    Resume data goes to ``resume_dir`` (default: ``.pyowtorrent`` in each
    torrent's save directory).  ``upload_rate_limit`` caps what all torrents
    send, in bytes per second (0: no cap).
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
        resume_dir: str | os.PathLike[str] | None = None,
        disk_threads: int | None = None,
        upload_rate_limit: int = 0,
        request_timeout: float = 20.0,
        reconnect_delay: float = 5.0,
        tracker_timeout: float = 30.0,
        udp_retransmit_base: float = 15.0,
    ) -> None:
        self.listen = [listen] if isinstance(listen, str) else list(listen or [])
        self.port = port
        self.peer_id = peer_id or make_peer_id()
        if len(self.peer_id) != 20:
            raise ValueError("a peer id is 20 bytes")
        self.upload_slots = upload_slots
        self.max_connections = max_connections
        self.max_connections_per_torrent = max_connections_per_torrent
        self.resume_dir = Path(resume_dir) if resume_dir is not None else None
        self.client_name = f"pyowtorrent {__version__}"
        # Requests unanswered this long go to other peers and the peer counts as snubbed.
        self.request_timeout = request_timeout
        # A peer that dropped or refused us is tried again after this long.
        self.reconnect_delay = reconnect_delay
        self.upload_limiter = RateLimiter(upload_rate_limit)
        # Trackers: HTTP answers within tracker_timeout; UDP retries after
        # udp_retransmit_base·2ⁿ seconds (BEP 15's 15 s; smaller in tests).
        self.tracker_timeout = tracker_timeout
        self.udp_retransmit_base = udp_retransmit_base
        self.announce_key = secrets.randbits(32)  # BEP 7 'key': the same for the session's life
        self._http: Any = None
        self.own_addresses: set[tuple[str, int]] = set()  # found by connecting to ourselves
        self._handshaking = 0
        # One disk thread per core: hashing is CPU work, and every extra thread
        # costs hand-offs and wake-ups.
        self.executor = ThreadPoolExecutor(max_workers=disk_threads or min(8, os.cpu_count() or 1))
        self.torrents: dict[bytes, Torrent] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[Any]] = set()
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
                server = await asyncio.start_server(self._incoming, host=host, port=port, reuse_address=True)
            except OSError as exc:
                if host == "::" and self._servers:
                    log.info("no IPv6 listen socket: %s", exc)  # an IPv4-only machine
                    continue
                raise PyowtorrentError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
            self._servers.append(server)
            if port == 0:
                port = getattr(server, "sockets")[0].getsockname()[1]
        self.listen_port = port

    @property
    def listen_addresses(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for server in self._servers:
            for sock in getattr(server, "sockets", ()):
                host, port = sock.getsockname()[:2]
                out.append((host, port))
        return out

    async def add_torrent(
        self,
        torrent: Metainfo | str | os.PathLike[str],
        save_path: str | os.PathLike[str] = ".",
        *,
        peers: Sequence[tuple[str, int]] = (),
        file_priorities: Sequence[int] | None = None,
        sequential: bool = False,
        trackers: Sequence[Sequence[str]] | None = None,
    ) -> Torrent:
        """Add a torrent and start it: check the files already there, then download or seed.

        ``trackers`` (tiers of URLs) replaces the torrent's own list when given.
        """
        meta = torrent if isinstance(torrent, Metainfo) else load_metainfo(torrent)
        if meta.info_hash in self.torrents:
            raise PyowtorrentError(f"{meta.name}: this torrent is already in the session")
        save = Path(save_path)
        resume_dir = self.resume_dir if self.resume_dir is not None else save / ".pyowtorrent"
        t = Torrent(
            self,
            meta,
            save,
            resume_path=resume_dir / f"{meta.info_hash.hex()}.resume.json",
            file_priorities=file_priorities,
            sequential=sequential,
            trackers=trackers,
        )
        self.torrents[meta.info_hash] = t
        for host, p in peers:
            t.add_peer(host, p)
        await t.start()
        t._connect_more()
        return t

    async def remove_torrent(self, torrent: Torrent, *, delete_files: bool = False) -> None:
        if self.torrents.get(torrent.meta.info_hash) is not torrent:
            return
        del self.torrents[torrent.meta.info_hash]
        await torrent.stop()
        if delete_files:
            await asyncio.get_running_loop().run_in_executor(self.executor, torrent.storage.delete_files)
            if torrent.resume_path is not None:
                torrent.resume_path.unlink(missing_ok=True)

    def http_client(self) -> Any:
        """The aiohttp client session shared by the trackers (made on first use, in the loop)."""
        if self._http is None:
            import aiohttp

            self._http = aiohttp.ClientSession(headers={"User-Agent": self.client_name})
        return self._http

    def can_connect(self) -> bool:
        return sum(len(t.peers) for t in self.torrents.values()) < self.max_connections

    async def _incoming(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._handshaking >= MAX_PENDING_HANDSHAKES:
            writer.close()  # a flood of silent connections must not use up our file descriptors
            return
        self._handshaking += 1
        try:
            data = await asyncio.wait_for(_read_handshake(reader), HANDSHAKE_TIMEOUT)
            hs = parse_handshake(data)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ProtocolError, OSError):
            writer.close()
            return
        finally:
            self._handshaking -= 1
        torrent = self.torrents.get(hs.info_hash) if hs is not None else None
        if torrent is None or not self.can_connect():
            writer.close()
            return
        torrent.accept(reader, writer, data)

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop every torrent (saving resume data), close the sockets, wait for the peers to go."""
        for server in self._servers:
            server.close()
        await asyncio.gather(*(t.stop() for t in list(self.torrents.values())))
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        # Waiting for the disk workers must not block the event loop.
        await asyncio.to_thread(self.executor.shutdown, True)
