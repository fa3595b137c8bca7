"""The façade: ``pyowtorrent.download()`` and friends, against real seeders on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

import pyowtorrent
from pyowtorrent.engine.events import TorrentState, TorrentStatus
from pyowtorrent.engine.services import InlineDisk
from pyowtorrent.engine.session import Session
from pyowtorrent.metainfo.torrent_file import Metainfo
from pyowtorrent.storage.create import create_torrent

from .conftest import REPO, free_port
from .engine_util import make_zip, same_tree
from .lt_util import lt_seeder

ZIP_MEMBERS = {"worms/a.tif": 700_000, "worms/b.csv": 123_457}


def zip_torrent(tmp: Path, trackers: list[str] | None = None) -> tuple[Metainfo, Path]:
    """A seeder directory holding ``dataset.zip``, and its single-file torrent."""
    seed_dir = tmp / "seeder"
    make_zip(seed_dir / "dataset.zip", ZIP_MEMBERS)
    return create_torrent(seed_dir / "dataset.zip", piece_length=32768, trackers=trackers or []), seed_dir


class Seeder:
    """Our own seeder on a thread of its own, so the blocking façade can be called from the test."""

    def __init__(self, meta: Metainfo, directory: Path, upload_rate_limit: int = 0) -> None:
        self.loop = asyncio.new_event_loop()
        # Its disk work on its own loop: the seeder starts no threads (a test counts the leecher's).
        self.session = Session(listen="127.0.0.1", upload_rate_limit=upload_rate_limit, disk=InlineDisk())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._call(self.session.start())
        self.torrent = self._call(self.session.add_torrent(meta, directory))
        self._call(self.torrent.wait_done(timeout=30))
        self.address = ("127.0.0.1", self.session.listen_port)

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self._call(self.session.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture
def seeder(tmp_path: Path) -> Iterator[Callable[..., Seeder]]:
    made: list[Seeder] = []

    def make(meta: Metainfo, directory: Path, upload_rate_limit: int = 0) -> Seeder:
        s = Seeder(meta, directory, upload_rate_limit)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


# -- must show: a fresh process fetches a .zip from a libtorrent seeder found through opentracker --


def test_download_in_a_fresh_process_from_a_libtorrent_seeder_found_through_opentracker(
    tmp_path: Path, opentracker: Callable[[bytes], tuple[int, int]]
) -> None:
    probe, _ = zip_torrent(tmp_path / "probe")
    tcp, _udp = opentracker(probe.info_hash)
    meta, seed_dir = zip_torrent(tmp_path, [f"http://127.0.0.1:{tcp}/announce"])
    assert meta.info_hash == probe.info_hash
    torrent = tmp_path / "dataset.zip.torrent"
    torrent.write_bytes(meta.to_bytes())
    dest = tmp_path / "dest"

    with lt_seeder(meta.to_bytes(), seed_dir):
        out = run_python(
            "import sys, pyowtorrent\n"
            "print(pyowtorrent.download(sys.argv[1], sys.argv[2], timeout=60))",
            str(torrent),
            str(dest),
        )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(dest / "dataset.zip")
    assert (dest / "dataset.zip").read_bytes() == (seed_dir / "dataset.zip").read_bytes()


def test_the_blocking_call_inside_a_running_loop_raises_at_once(tmp_path: Path) -> None:
    meta, _ = zip_torrent(tmp_path)

    async def main() -> None:
        with pytest.raises(pyowtorrent.PyowtorrentError, match=r"await pyowtorrent\.adownload"):
            pyowtorrent.download(meta, tmp_path / "dest", peers=["127.0.0.1:1"])

    asyncio.run(main())
    assert not (tmp_path / "dest").exists()  # it did not start


# -- sources: path, bytes, Metainfo, URL, a torrent source's reference ---------------------


@pytest.mark.parametrize("kind", ["path", "bytes", "metainfo", "url", "local-source", "http-source", "info-hash"])
def test_every_kind_of_source_downloads(tmp_path: Path, seeder: Callable[..., Seeder], kind: str) -> None:
    meta, seed_dir = zip_torrent(tmp_path)
    s = seeder(meta, seed_dir)
    torrents = tmp_path / "torrents"
    torrents.mkdir()
    (torrents / "dataset.zip.torrent").write_bytes(meta.to_bytes())

    def fetch(source: object, torrent_source: object = None) -> Path:
        return pyowtorrent.download(source, tmp_path / "dest", peers=[s.address], timeout=30, torrent_source=torrent_source)  # type: ignore[arg-type]

    with _static_server(torrents) as base:
        if kind == "path":
            got = fetch(torrents / "dataset.zip.torrent")
        elif kind == "bytes":
            got = fetch(meta.to_bytes())
        elif kind == "metainfo":
            got = fetch(meta)
        elif kind == "url":
            got = fetch(f"{base}dataset.zip.torrent")
        elif kind == "local-source":
            got = fetch("dataset.zip", torrents)
        elif kind == "http-source":
            got = fetch("dataset.zip.torrent", base)
        else:
            got = fetch(meta.info_hash.hex(), pyowtorrent.sources.LocalDirectory(torrents))
    assert got == tmp_path / "dest" / "dataset.zip"
    assert got.read_bytes() == (seed_dir / "dataset.zip").read_bytes()


def test_a_multi_file_torrent_returns_its_directory(tmp_path: Path, seeder: Callable[..., Seeder]) -> None:
    from .engine_util import make_torrent

    meta, seed_dir = make_torrent(tmp_path, {"a/one.bin": 100_000, "two.bin": 50_001})
    s = seeder(meta, seed_dir)
    got = pyowtorrent.download(meta, tmp_path / "dest", peers=[f"127.0.0.1:{s.address[1]}"], timeout=30)
    assert got == tmp_path / "dest" / "ds" and got.is_dir()
    assert same_tree(seed_dir / "ds", got)


def test_a_torrent_the_source_lacks_is_torrent_not_found(tmp_path: Path) -> None:
    (tmp_path / "torrents").mkdir()
    with pytest.raises(pyowtorrent.TorrentNotFound, match="nothere.zip"):
        pyowtorrent.download("nothere.zip", tmp_path / "dest", torrent_source=tmp_path / "torrents")
    with _static_server(tmp_path / "torrents") as base:
        with pytest.raises(pyowtorrent.TorrentNotFound, match="404"):
            pyowtorrent.download(f"{base}nothere.torrent", tmp_path / "dest")


def test_a_file_that_is_no_torrent_is_a_metainfo_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.torrent"
    bad.write_bytes(b"<html>not a torrent</html>")
    with pytest.raises(pyowtorrent.MetainfoError, match="bad.torrent"):
        pyowtorrent.download(bad, tmp_path / "dest")


# -- a returning call is cheap -----------------------------------------------------------


def test_a_second_download_of_verified_data_touches_no_network(tmp_path: Path, seeder: Callable[..., Seeder]) -> None:
    meta, seed_dir = zip_torrent(tmp_path)
    s = seeder(meta, seed_dir)
    first = pyowtorrent.download(meta, tmp_path / "dest", peers=[s.address], timeout=30)
    s.close()

    # A listening socket standing in for a peer and a tracker: any contact shows up as a connection.
    with socket.socket() as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen()
        trap.setblocking(False)
        port = trap.getsockname()[1]
        again = pyowtorrent.download(
            meta, tmp_path / "dest", peers=[("127.0.0.1", port)], trackers=[[f"http://127.0.0.1:{port}/announce"]]
        )
        with pytest.raises(BlockingIOError):
            trap.accept()
    assert again == first
    assert pyowtorrent.is_complete(meta, tmp_path / "dest")


def test_changed_data_is_not_vouched_for(tmp_path: Path, seeder: Callable[..., Seeder]) -> None:
    meta, seed_dir = zip_torrent(tmp_path)
    s = seeder(meta, seed_dir)
    got = pyowtorrent.download(meta, tmp_path / "dest", peers=[s.address], timeout=30)
    assert pyowtorrent.is_complete(meta, tmp_path / "dest")
    with open(got, "r+b") as f:
        f.seek(1000)
        f.write(b"\xff" * 10)
    os.utime(got, ns=(1, 1))  # a different mtime: the resume data no longer matches the file
    assert not pyowtorrent.is_complete(meta, tmp_path / "dest")
    # The next call rechecks, finds the damaged piece and fetches it again.
    again = pyowtorrent.download(meta, tmp_path / "dest", peers=[s.address], timeout=30)
    assert again.read_bytes() == (seed_dir / "dataset.zip").read_bytes()


# -- typed errors -------------------------------------------------------------------


def test_nobody_to_ask_is_an_error_at_once(tmp_path: Path) -> None:
    meta, _ = zip_torrent(tmp_path)  # no trackers
    with pytest.raises(pyowtorrent.NoPeersError, match="no tracker and no web seed, and no peers"):
        pyowtorrent.download(meta, tmp_path / "dest")


def test_a_web_seed_alone_is_enough_to_download(tmp_path: Path) -> None:
    seed_dir = tmp_path / "seeder"
    make_zip(seed_dir / "dataset.zip", ZIP_MEMBERS)
    with _static_server(seed_dir) as base:
        meta = create_torrent(seed_dir / "dataset.zip", piece_length=32768, web_seeds=[base + "dataset.zip"])
        got = pyowtorrent.download(meta, tmp_path / "dest", timeout=30)
    assert got.read_bytes() == (seed_dir / "dataset.zip").read_bytes()


def test_no_peer_and_no_tracker_answering_is_no_peers_error(tmp_path: Path) -> None:
    dead = free_port()
    meta, _ = zip_torrent(tmp_path, [f"http://127.0.0.1:{dead}/announce"])
    with pytest.raises(pyowtorrent.NoPeersError, match=rf"trackers: http://127.0.0.1:{dead}/announce") as info:
        pyowtorrent.download(meta, tmp_path / "dest", timeout=2)
    assert isinstance(info.value, pyowtorrent.DownloadTimeout)
    assert "0 of" in str(info.value)


def test_a_timeout_says_how_far_it_got(tmp_path: Path, seeder: Callable[..., Seeder]) -> None:
    meta, seed_dir = zip_torrent(tmp_path)
    s = seeder(meta, seed_dir, upload_rate_limit=64 << 10)  # about 13 s for the whole payload
    seen: list[TorrentStatus] = []
    with pytest.raises(pyowtorrent.DownloadTimeout) as info:
        pyowtorrent.download(meta, tmp_path / "dest", peers=[s.address], timeout=3, progress=seen.append)
    assert not isinstance(info.value, pyowtorrent.NoPeersError)
    st = info.value.status
    assert isinstance(st, TorrentStatus) and 0 < st.pieces_have < st.num_pieces
    assert f"{st.pieces_have} of {st.num_pieces} pieces" in str(info.value)
    assert "1 peers connected" in str(info.value)
    assert seen and all(isinstance(x, TorrentStatus) for x in seen)


def test_a_destination_that_cannot_be_written_is_a_storage_error(tmp_path: Path, seeder: Callable[..., Seeder]) -> None:
    meta, seed_dir = zip_torrent(tmp_path)
    s = seeder(meta, seed_dir)
    blocker = tmp_path / "dest"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(pyowtorrent.StorageError, match="dataset.zip"):
        pyowtorrent.download(meta, blocker, peers=[s.address], timeout=30)


def test_progress_reports_typed_status_up_to_done(tmp_path: Path, seeder: Callable[..., Seeder]) -> None:
    meta, seed_dir = zip_torrent(tmp_path)
    s = seeder(meta, seed_dir)
    seen: list[TorrentStatus] = []
    pyowtorrent.download(meta, tmp_path / "dest", peers=[s.address], timeout=30, progress=seen.append)
    assert seen[-1].progress == 1.0 and seen[-1].state is TorrentState.SEEDING
    assert seen[-1].bytes_done == meta.total_length


# -- cancellation and threads -----------------------------------------------------------


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""  # the listing's own descriptor, closed since


def test_cancelling_leaves_nothing_behind_and_saves_resume_data(tmp_path: Path, seeder: Callable[..., Seeder]) -> None:
    meta, seed_dir = zip_torrent(tmp_path)
    s = seeder(meta, seed_dir, upload_rate_limit=64 << 10)
    threads_before = set(threading.enumerate())
    fds_before = _open_fds()

    async def main() -> None:
        first_piece = asyncio.Event()

        def progress(st: TorrentStatus) -> None:
            if st.pieces_have >= 2:
                first_piece.set()

        task = asyncio.ensure_future(
            pyowtorrent.adownload(meta, tmp_path / "dest", peers=[s.address], progress=progress)
        )
        waiter = asyncio.ensure_future(first_piece.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        assert not task.done(), "the download ended before it could be cancelled"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert others == [], f"tasks left behind: {others}"

    asyncio.run(main())
    assert set(threading.enumerate()) <= threads_before
    left = {fd: _target(fd) for fd in _open_fds() - fds_before}
    # The seeder (in this process too) opens its files on its first read: those are its own.
    assert not {fd: t for fd, t in left.items() if t and not t.startswith(str(seed_dir))}
    resume = tmp_path / "dest" / ".pyowtorrent" / f"{meta.info_hash.hex()}.resume.json"
    assert resume.is_file()
    assert not list((tmp_path / "dest").rglob("*.tmp"))


def test_ctrl_c_stops_a_blocking_download_and_saves_resume_data(tmp_path: Path, seeder: Callable[..., Seeder]) -> None:
    meta, seed_dir = zip_torrent(tmp_path)
    s = seeder(meta, seed_dir, upload_rate_limit=32 << 10)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(meta.to_bytes())
    code = (
        "import sys, pyowtorrent\n"
        "def progress(st):\n"
        "    if st.pieces_have >= 1:\n"
        "        print('started', flush=True)\n"
        "try:\n"
        "    pyowtorrent.download(sys.argv[1], sys.argv[2], peers=[sys.argv[3]], progress=progress)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(130)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(torrent), str(tmp_path / "dest"), f"127.0.0.1:{s.address[1]}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in out and "Traceback" not in err
    resume = tmp_path / "dest" / ".pyowtorrent" / f"{meta.info_hash.hex()}.resume.json"
    assert resume.is_file()


def test_several_threads_download_at_once(tmp_path: Path, seeder: Callable[..., Seeder]) -> None:
    meta, seed_dir = zip_torrent(tmp_path)
    s = seeder(meta, seed_dir)
    results: dict[int, Path | BaseException] = {}

    def worker(i: int) -> None:
        try:
            results[i] = pyowtorrent.download(meta, tmp_path / f"dest{i}", peers=[s.address], timeout=60)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    want = (seed_dir / "dataset.zip").read_bytes()
    for i in range(3):
        got = results[i]
        assert isinstance(got, Path), got
        assert got.read_bytes() == want


def test_seed_after_keeps_seeding_for_the_next_leecher(tmp_path: Path, seeder: Callable[..., Seeder]) -> None:
    meta, seed_dir = zip_torrent(tmp_path)
    s = seeder(meta, seed_dir)
    try:
        pyowtorrent.download(meta, tmp_path / "dest", peers=[s.address], timeout=30, seed_after=True)
        s.close()
        from pyowtorrent import api

        bg = api._background_session
        assert bg is not None
        port = bg.session.listen_port
        # The original seeder is gone: only the background session has the data.
        again = pyowtorrent.download(meta, tmp_path / "dest2", peers=[f"127.0.0.1:{port}"], timeout=30)
        assert again.read_bytes() == (seed_dir / "dataset.zip").read_bytes()
    finally:
        pyowtorrent.stop_seeding()


def test_seed_checks_the_payload_and_serves_it(tmp_path: Path) -> None:
    meta, seed_dir = zip_torrent(tmp_path)
    port = free_port()

    async def main() -> None:
        seeding = asyncio.ensure_future(pyowtorrent.aseed(meta, seed_dir, listen="127.0.0.1", port=port, timeout=60))
        try:
            got = await pyowtorrent.adownload(meta, tmp_path / "dest", peers=[("127.0.0.1", port)], timeout=30)
        finally:
            seeding.cancel()
        assert got.read_bytes() == (seed_dir / "dataset.zip").read_bytes()

    asyncio.run(main())


def test_seed_refuses_an_incomplete_payload(tmp_path: Path) -> None:
    meta, seed_dir = zip_torrent(tmp_path)
    with open(seed_dir / "dataset.zip", "r+b") as f:
        f.truncate(10_000)
    with pytest.raises(pyowtorrent.StorageError, match="pieces check out"):
        pyowtorrent.seed(meta, seed_dir, listen="127.0.0.1", timeout=5)


def test_the_package_root_exports_the_facade() -> None:
    for name in ("download", "adownload", "seed", "create_torrent", "verify_payload", "Session", "DownloadTimeout"):
        assert getattr(pyowtorrent, name) is not None
        assert name in pyowtorrent.__all__


# -- a tiny static web server for the URL sources --------------------------------------------


class _static_server:
    """aiohttp serving a directory on loopback, on a thread of its own; gives its base URL."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __enter__(self) -> str:
        from aiohttp import web

        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_static("/", self.directory)
        self.runner = web.AppRunner(app)

        async def start() -> int:
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        port = asyncio.run_coroutine_threadsafe(start(), self.loop).result()
        return f"http://127.0.0.1:{port}/"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()
