"""The façade: one call that turns a torrent into a verified directory.

:func:`download` blocks until every piece is verified on disk and returns
the content's path; :func:`adownload` is the same as a coroutine.
:func:`seed` checks a payload and seeds it.  Each call runs its own
:class:`~pyowtorrent.engine.session.Session` and closes it before it
returns (or raises, or is cancelled), so nothing is left running; with
``seed_after=True`` the torrent moves instead to one background session that
keeps seeding until :func:`stop_seeding` or the interpreter's exit.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import re
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterable, ParamSpec, Sequence, TypeVar, Union

from .engine.events import StateChanged, TorrentEvent, TorrentState, TorrentStatus
from .engine.session import Session, load_fetched_torrent, resume_file
from .engine.torrent import Torrent
from .errors import DownloadTimeout, MetainfoError, NoPeersError, PyowtorrentError, SourceError
from .metainfo.magnet import Magnet, parse_magnet
from .metainfo.torrent_file import Metainfo, load_metainfo, parse_metainfo
from .sources import TorrentSource, open_source
from .sources.http import fetch_url
from .storage.files import Storage
from .storage.resume import ResumeData

__all__ = [
    "download",
    "adownload",
    "seed",
    "aseed",
    "resolve_torrent",
    "content_path",
    "is_complete",
    "stop_seeding",
    "Source",
    "PeerSpec",
]

log = logging.getLogger(__name__)

Source = Union[str, os.PathLike[str], bytes, Metainfo]
PeerSpec = Union[str, tuple[str, int]]
Progress = Callable[[TorrentStatus], None]
T = TypeVar("T")
P = ParamSpec("P")

# How often the progress callback hears of a torrent that is not changing state.
PROGRESS_INTERVAL = 0.5


# -- where the torrent comes from ----------------------------------------------------------


async def resolve_torrent(source: Source, *, torrent_source: TorrentSource | str | os.PathLike[str] | None = None) -> Metainfo:
    """The torrent ``source`` names.

    ``source`` is a :class:`Metainfo`, the bytes of a ``.torrent``, an
    ``http(s)://`` URL of one, or a path to one; with ``torrent_source``
    (a :class:`TorrentSource`, a directory, a base URL or ``gdrive:FOLDER``)
    a string is first a reference that source resolves.
    """
    if isinstance(source, Metainfo):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        return parse_metainfo(bytes(source))
    text = os.fspath(source)
    if _is_magnet(source):
        raise MetainfoError(
            "this takes a .torrent, and a magnet link's metadata comes from peers:"
            " pyowtorrent.download(), `pyowtorrent download` and Session.add_magnet() fetch it"
        )
    if torrent_source is not None and not isinstance(source, os.PathLike):
        data = await open_source(torrent_source).fetch(text)
        return _parse_fetched(data, f"{text!r} from {torrent_source}")
    if re.match(r"(?i)https?://", text):
        return _parse_fetched(await fetch_url(text), text)
    return await asyncio.to_thread(load_metainfo, text)


def _is_magnet(source: Source) -> bool:
    return isinstance(source, str) and source[:7].lower() == "magnet:"


def _parse_fetched(data: bytes, what: str) -> Metainfo:
    try:
        return parse_metainfo(data)
    except MetainfoError as exc:
        raise SourceError(f"{what} is not a usable .torrent: {exc}") from None


def content_path(meta: Metainfo, dest: str | os.PathLike[str]) -> Path:
    """Where the torrent's content lands: ``dest/<name>``, a file or a directory."""
    return Path(dest) / meta.name


def is_complete(meta: Metainfo, dest: str | os.PathLike[str], resume_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when resume data vouches for every piece: files as they were when their pieces were verified.

    Reads no payload: it compares each file's size and modification time
    with those recorded when its pieces passed their SHA-1 check.
    """
    path = resume_file(meta, Path(dest), Path(resume_dir) if resume_dir is not None else None)
    try:
        resume = ResumeData.from_json(path.read_text(), meta)
    except (OSError, UnicodeDecodeError):
        return False
    if resume is None:
        return False
    try:
        stamps = Storage(meta, dest).file_stamps()
    except (PyowtorrentError, OSError):
        return False
    return len(resume.trusted_pieces(meta, stamps)) == meta.num_pieces


def _peers(peers: Iterable[PeerSpec]) -> list[tuple[str, int]]:
    out = []
    for p in peers:
        if isinstance(p, str):
            host, sep, digits = p.rpartition(":")
            if not sep or not digits.isdigit() or not 0 < int(digits) < 65536:
                raise PyowtorrentError(f"peer {p!r} is not HOST:PORT")
            out.append((host.strip("[]"), int(digits)))
        else:
            host, port = p
            if not isinstance(port, int) or not 0 < port < 65536:
                raise PyowtorrentError(f"peer {p!r} has no valid port")
            out.append((str(host), port))
    return out


# -- downloading ------------------------------------------------------------------


async def adownload(
    source: Source,
    dest: str | os.PathLike[str],
    *,
    timeout: float | None = None,
    peers: Iterable[PeerSpec] = (),
    progress: Progress | None = None,
    seed_after: bool = False,
    torrent_source: TorrentSource | str | os.PathLike[str] | None = None,
    trackers: Sequence[Sequence[str]] | None = None,
    listen: str | Sequence[str] | None = ("0.0.0.0", "::"),
    port: int = 0,
    upload_rate_limit: int = 0,
    resume_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Download ``source`` into ``dest`` and return ``dest/<name>`` once every piece is verified on disk.

    Data already verified (resume data vouches for it) returns at once,
    without touching the network.  Raises :class:`DownloadTimeout` (or
    :class:`NoPeersError` when nobody answered) after ``timeout`` seconds,
    :class:`~pyowtorrent.errors.StorageError` when the files cannot be
    written, a :class:`~pyowtorrent.errors.SourceError` or
    :class:`~pyowtorrent.errors.MetainfoError` when the torrent cannot be had.
    ``progress`` is called with each :class:`TorrentStatus`.

    A ``magnet:`` link's metadata is fetched from peers first (within the
    same ``timeout``) and kept beside the resume data, so that a second call
    for the same link touches no network either.
    """
    peer_list = _peers(peers)
    dest_path = Path(dest).expanduser()
    magnet: Magnet | None = None
    meta: Metainfo | None
    if _is_magnet(source):
        magnet = parse_magnet(str(source))
        keep = Path(resume_dir) if resume_dir is not None else None
        meta = None if magnet.info_hash is None else await asyncio.to_thread(load_fetched_torrent, magnet.info_hash, dest_path, keep)
    else:
        meta = await resolve_torrent(source, torrent_source=torrent_source)
    if meta is not None and await asyncio.to_thread(is_complete, meta, dest_path, resume_dir):
        log.info("%s: already verified in %s", meta.name, dest_path)
        if seed_after:
            await _background().adopt(meta, dest_path, peer_list, trackers)
        return content_path(meta, dest_path)
    if meta is not None and magnet is None:
        has_trackers = bool(trackers) if trackers is not None else bool(meta.trackers)
        if not has_trackers and not peer_list and not meta.web_seeds:
            raise NoPeersError(
                f"{meta.name}: the torrent names no tracker and no web seed, and no peers were given: nobody to download from"
            )
    options = dict(listen=listen, port=port, upload_rate_limit=upload_rate_limit, resume_dir=resume_dir)
    async with Session(**options) as session:  # type: ignore[arg-type]
        started = session.clock.now()
        if magnet is not None:
            torrent = await session.add_magnet(magnet, dest_path, peers=peer_list, timeout=timeout, trackers=trackers)
        else:
            assert meta is not None
            torrent = await session.add_torrent(meta, dest_path, peers=peer_list, trackers=trackers)
        left = None if timeout is None else max(0.0, timeout - (session.clock.now() - started))
        await _wait_verified(torrent, left, progress, timeout)
    meta = torrent.meta
    if seed_after:
        await _background().adopt(meta, dest_path, peer_list, trackers)
    return content_path(meta, dest_path)


async def _wait_verified(
    torrent: Torrent, timeout: float | None, progress: Progress | None, overall: float | None = None
) -> None:
    """Wait until done, reporting progress; a timeout says how far it got and whether anyone answered."""
    changed = asyncio.Event()

    def on_event(e: TorrentEvent) -> None:
        if isinstance(e, StateChanged):
            changed.set()

    unsubscribe = torrent.add_listener(on_event)
    done = asyncio.ensure_future(torrent.wait_done(timeout))
    ever_peers = 0
    try:
        while True:
            st = torrent.status()
            ever_peers = max(ever_peers, st.num_peers)
            if progress is not None:
                progress(st)
            if done.done():
                break
            changed.clear()
            waiter = asyncio.ensure_future(changed.wait())
            try:
                await asyncio.wait({done, waiter}, timeout=PROGRESS_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        try:
            done.result()
        except TimeoutError:
            said = overall if overall is not None else timeout
            raise _timeout_error(torrent.meta, torrent.status(), said, ever_peers or torrent.swarm.downloaded_bytes) from None
    finally:
        unsubscribe()
        done.cancel()


def _timeout_error(meta: Metainfo, st: TorrentStatus, timeout: float | None, had_peers: int) -> DownloadTimeout:
    got = f"{st.pieces_have} of {st.num_pieces} pieces ({st.progress:.1%})"
    if had_peers or st.pieces_have and st.downloaded:
        return DownloadTimeout(f"{meta.name}: not done after {timeout:g} s: {got}, {st.num_peers} peers connected", st)
    trackers = "; ".join(f"{t.url}: {t.last_error or 'no answer'}" for t in st.trackers) or "none"
    return NoPeersError(f"{meta.name}: no peer connected within {timeout:g} s ({got}); trackers: {trackers}", st)


def _blocking(coroutine_function: Callable[P, Coroutine[Any, Any, T]], doc: str) -> Callable[P, T]:
    """The blocking twin of a coroutine function: same parameters, runs it on a loop of its own."""
    name = coroutine_function.__name__.removeprefix("a")

    @functools.wraps(coroutine_function)
    def blocking(*args: P.args, **kwargs: P.kwargs) -> T:
        return _run_blocking(coroutine_function(*args, **kwargs), name)

    blocking.__name__ = blocking.__qualname__ = name
    blocking.__doc__ = doc
    return blocking


download = _blocking(
    adownload,
    """Download ``source`` into ``dest``, blocking until every piece is verified on disk; returns ``dest/<name>``.

    The same as :func:`adownload`, for scripts and data loaders.  Inside a
    running event loop it raises :class:`~pyowtorrent.errors.PyowtorrentError`
    at once (await :func:`adownload` there).  Safe to call from several
    threads at once; Ctrl-C cancels it cleanly, saving resume data.
    """,
)


# -- seeding ----------------------------------------------------------------------


async def aseed(
    source: Source,
    directory: str | os.PathLike[str],
    *,
    timeout: float | None = None,
    peers: Iterable[PeerSpec] = (),
    progress: Progress | None = None,
    torrent_source: TorrentSource | str | os.PathLike[str] | None = None,
    trackers: Sequence[Sequence[str]] | None = None,
    listen: str | Sequence[str] | None = ("0.0.0.0", "::"),
    port: int = 0,
    upload_rate_limit: int = 0,
) -> None:
    """Check the payload in ``directory``, then seed it for ``timeout`` seconds (``None``: until cancelled).

    A payload that does not check out completely raises
    :class:`~pyowtorrent.errors.StorageError`: seeding is for data that is whole.
    """
    from .errors import StorageError

    meta = await resolve_torrent(source, torrent_source=torrent_source)
    async with Session(listen=listen, port=port, upload_rate_limit=upload_rate_limit) as session:
        torrent = await session.add_torrent(meta, directory, peers=_peers(peers), trackers=trackers)
        while torrent.state is TorrentState.CHECKING:
            await _next_state(torrent)
        st = torrent.status()
        if st.state is TorrentState.ERROR:
            raise StorageError(f"{meta.name}: {st.error}")
        if st.state is not TorrentState.SEEDING:
            raise StorageError(
                f"{meta.name}: only {st.pieces_have} of {st.num_pieces} pieces check out in {directory}: not seeding"
            )
        deadline = None if timeout is None else session.clock.now() + timeout
        while True:
            if progress is not None:
                progress(torrent.status())
            wait = PROGRESS_INTERVAL if deadline is None else min(PROGRESS_INTERVAL, deadline - session.clock.now())
            if wait <= 0:
                return
            await session.clock.sleep(wait)


async def _next_state(torrent: Torrent) -> None:
    changed = asyncio.Event()
    unsubscribe = torrent.add_listener(lambda e: changed.set() if isinstance(e, StateChanged) else None)
    try:
        if torrent.state is TorrentState.CHECKING:
            await changed.wait()
    finally:
        unsubscribe()


seed = _blocking(
    aseed,
    """Check the payload in ``directory``, then seed it, blocking; the same as :func:`aseed`.

    Ctrl-C ends it cleanly (resume data saved).
    """,
)


# -- running a coroutine for a blocking caller ------------------------------------------


def _run_blocking(coro: Coroutine[Any, Any, T], name: str) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise PyowtorrentError(
            f"pyowtorrent.{name}() blocks, and this thread runs an event loop: await pyowtorrent.a{name}(...) instead"
        )
    # asyncio.run: a loop of this thread's own (several threads may download at
    # once); on Ctrl-C it cancels the download, which closes its session (resume
    # data saved) before KeyboardInterrupt reaches the caller.
    return asyncio.run(coro)


# -- seeding after a download: one background session --------------------------------------


class _Background:
    """A session on a thread of its own, where finished downloads keep seeding."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready: Future[Session] = Future()
        self._thread = threading.Thread(target=self._main, name="pyowtorrent-seeding", daemon=True)
        self._thread.start()
        self.session = self._ready.result()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> Session:
            session = Session()
            await session.start()
            return session

        try:
            self._ready.set_result(self._loop.run_until_complete(start()))
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits
            self._ready.set_exception(exc)
            return
        self._loop.run_forever()

    async def adopt(
        self, meta: Metainfo, dest: Path, peers: list[tuple[str, int]], trackers: Sequence[Sequence[str]] | None
    ) -> None:
        async def add() -> None:
            if meta.info_hash not in self.session.torrents:
                await self.session.add_torrent(meta, dest, peers=peers, trackers=trackers)

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(add(), self._loop))

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.session.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


_background_session: _Background | None = None
_background_lock = threading.Lock()


def _background() -> _Background:
    global _background_session
    with _background_lock:
        if _background_session is None:
            _background_session = _Background()
            atexit.register(stop_seeding)
        return _background_session


def stop_seeding() -> None:
    """Stop seeding what ``seed_after=True`` left seeding (resume data saved); called at exit too."""
    global _background_session
    with _background_lock:
        bg, _background_session = _background_session, None
    if bg is not None:
        bg.stop()
