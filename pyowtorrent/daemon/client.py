"""Talking to a running daemon over its control socket: :class:`AsyncDaemonClient` and the blocking :class:`DaemonClient`.

For example, handing a finished dataset to the daemon to keep seeding it
(its resume data makes the check cheap)::

    from pyowtorrent.daemon.client import DaemonClient

    DaemonClient(state_dir).add(meta.to_bytes(), "/data/datasets")

Every failure is a :class:`~pyowtorrent.errors.DaemonError`: no daemon
running, a daemon that does not answer, a command it refused.
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any, Awaitable, Callable, Iterable, TypeVar

import aiohttp

from ..errors import DaemonError, MetainfoError, PyowtorrentError
from ..metainfo.torrent_file import load_metainfo
from .paths import DaemonPaths, lock_holder, resolve_state_dir

__all__ = ["AsyncDaemonClient", "DaemonClient", "torrent_ref", "no_daemon_message"]

T = TypeVar("T")

# Longest a command may take: a remove waits for its peers to close and its tracker to hear 'stopped'.
COMMAND_TIMEOUT = 120.0
# The host part of the URL is never resolved (the connector goes to the socket); it names the service.
BASE = "http://pyowtorrent-daemon/v1"

TorrentRef = str | bytes | os.PathLike[str]


def no_daemon_message(paths: DaemonPaths) -> str:
    return f"no daemon running for {paths.root}: start one with `pyowtorrent daemon start`"


def torrent_ref(ref: TorrentRef) -> str:
    """What the daemon looks a torrent up by: a 20-byte info-hash or a .torrent path become the hex info-hash."""
    if isinstance(ref, bytes):
        if len(ref) != 20:
            raise DaemonError(f"an info-hash is 20 bytes, not {len(ref)}")
        return ref.hex()
    text = os.fspath(ref)
    if isinstance(ref, os.PathLike) or os.path.isfile(text):
        try:
            return load_metainfo(text).info_hash.hex()
        except MetainfoError:
            if isinstance(ref, os.PathLike):
                raise
            # A file that is no torrent (the payload, say): the text is a name, then.
    return text


class AsyncDaemonClient:
    """One connection pool to the daemon of ``state_dir`` (default: as :func:`resolve_state_dir` finds it)."""

    def __init__(self, state_dir: str | os.PathLike[str] | None = None, *, timeout: float = COMMAND_TIMEOUT) -> None:
        self.paths = DaemonPaths(resolve_state_dir(state_dir))
        self._timeout = timeout
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncDaemonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def info(self) -> dict[str, Any]:
        """The daemon's pid, version, state directory and listen addresses."""
        result: dict[str, Any] = await self._call("GET", "/daemon")
        return result

    async def status(self) -> list[dict[str, Any]]:
        """One object per torrent: ``info_hash``, ``name``, ``state``, ``progress``, rates, ``peers``, ``eta``..."""
        result: list[dict[str, Any]] = await self._call("GET", "/torrents")
        return result

    async def add(
        self,
        torrent: bytes,
        save_path: str | os.PathLike[str],
        *,
        seed: bool = True,
        paused: bool = False,
        peers: Iterable[tuple[str, int]] = (),
    ) -> dict[str, Any]:
        """Add the ``.torrent`` whose bytes are ``torrent``, downloading into ``save_path``.

        ``seed``: keep seeding once complete (else pause then).  Adding a
        torrent already there with the same ``save_path`` changes nothing
        (``"added": false``); with another, it is refused.
        """
        body = {
            "torrent": base64.b64encode(torrent).decode("ascii"),
            "save_path": os.path.abspath(os.fspath(save_path)),
            "seed": seed,
            "paused": paused,
            "peers": [[host, port] for host, port in peers],
        }
        result: dict[str, Any] = await self._call("POST", "/torrents", body)
        return result

    async def pause(self, ref: TorrentRef) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", "/torrents/pause", {"torrent": torrent_ref(ref)})
        return result

    async def resume(self, ref: TorrentRef) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", "/torrents/resume", {"torrent": torrent_ref(ref)})
        return result

    async def remove(self, ref: TorrentRef, *, delete_data: bool = False) -> dict[str, Any]:
        body = {"torrent": torrent_ref(ref), "delete_data": delete_data}
        result: dict[str, Any] = await self._call("POST", "/torrents/remove", body)
        return result

    async def shutdown(self) -> int:
        """Ask the daemon to stop (it saves resume data first); returns its pid.  Does not wait for it."""
        result: dict[str, Any] = await self._call("POST", "/shutdown", {})
        return int(result["pid"])

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self._http is None:
            connector = aiohttp.UnixConnector(path=self.paths.socket_path())
            self._http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout))
        try:
            async with self._http.request(method, BASE + path, json=body) as response:
                try:
                    doc = await response.json(content_type=None)
                except ValueError:
                    doc = None
                if response.status >= 400:
                    message = doc.get("error") if isinstance(doc, dict) else None
                    raise DaemonError(f"the daemon refused: {message or f'HTTP {response.status}'}")
                return doc
        except aiohttp.ClientConnectorError:
            raise DaemonError(self._why_unreachable()) from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise DaemonError(f"the daemon for {self.paths.root} did not answer: {exc or type(exc).__name__}") from None

    def _why_unreachable(self) -> str:
        pid = lock_holder(self.paths)
        if pid is None:
            return no_daemon_message(self.paths)
        return f"the daemon for {self.paths.root} (pid {pid or '?'}) does not answer on {self.paths.socket}"


class DaemonClient:
    """:class:`AsyncDaemonClient`'s commands, blocking: for scripts and loaders, not for code inside an event loop."""

    def __init__(self, state_dir: str | os.PathLike[str] | None = None, *, timeout: float = COMMAND_TIMEOUT) -> None:
        self.paths = DaemonPaths(resolve_state_dir(state_dir))
        self._timeout = timeout

    def info(self) -> dict[str, Any]:
        return self._run(lambda c: c.info())

    def status(self) -> list[dict[str, Any]]:
        return self._run(lambda c: c.status())

    def add(
        self,
        torrent: bytes,
        save_path: str | os.PathLike[str],
        *,
        seed: bool = True,
        paused: bool = False,
        peers: Iterable[tuple[str, int]] = (),
    ) -> dict[str, Any]:
        return self._run(lambda c: c.add(torrent, save_path, seed=seed, paused=paused, peers=list(peers)))

    def pause(self, ref: TorrentRef) -> dict[str, Any]:
        return self._run(lambda c: c.pause(ref))

    def resume(self, ref: TorrentRef) -> dict[str, Any]:
        return self._run(lambda c: c.resume(ref))

    def remove(self, ref: TorrentRef, *, delete_data: bool = False) -> dict[str, Any]:
        return self._run(lambda c: c.remove(ref, delete_data=delete_data))

    def shutdown(self) -> int:
        return self._run(lambda c: c.shutdown())

    def _run(self, call: Callable[[AsyncDaemonClient], Awaitable[T]]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise PyowtorrentError("DaemonClient blocks, and this thread runs an event loop: use AsyncDaemonClient")

        async def main() -> T:
            async with AsyncDaemonClient(self.paths.root, timeout=self._timeout) as client:
                return await call(client)

        return asyncio.run(main())
