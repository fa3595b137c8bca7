"""The background daemon and its commands, as real processes over its real control socket.

Every daemon runs in the test's own state directory (``PYOWTORRENT_STATE_DIR``)
with ``XDG_CONFIG_HOME`` pointing at an empty directory, so no user's
configuration is read; the fixture kills whatever daemon is left.  Waits
poll a condition with a deadline; nothing is timed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import aiohttp
import pytest

from pyowtorrent.cli.daemon import render_table
from pyowtorrent.daemon.client import DaemonClient
from pyowtorrent.daemon.paths import DaemonPaths, lock_holder
from pyowtorrent.engine.session import Session
from pyowtorrent.errors import DaemonError
from pyowtorrent.metainfo.torrent_file import Metainfo
from pyowtorrent.storage.create import create_torrent

from .conftest import REPO
from .engine_util import make_payload, make_torrent, same_tree

REQUIRED_KEYS = {"info_hash", "name", "state", "progress", "download_rate", "upload_rate", "peers", "eta",
                 "save_path", "bytes_done", "bytes_total", "error"}


class Daemon:
    """The CLI and the daemon of one state directory, in a test's temporary directory."""

    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "st"
        self.paths = DaemonPaths(self.state)
        (tmp / "xdg-config").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYOWTORRENT_")}
        self.env = {**env, "PYTHONPATH": str(REPO), "XDG_CONFIG_HOME": str(tmp / "xdg-config"),
                    "PYOWTORRENT_STATE_DIR": str(self.state)}

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "pyowtorrent", *args], capture_output=True, text=True,
                           env=self.env, timeout=120)
        if ok:
            assert r.returncode == 0, f"{args}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def start(self) -> None:
        self.cli("daemon", "start", "--listen", "127.0.0.1")

    def pid(self) -> int | None:
        return lock_holder(self.paths)

    def status(self) -> list[dict[str, Any]]:
        return DaemonClient(self.state).status()

    def wait_for(self, want: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.status()
            if want(rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {rows}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the daemon holding the state directory, and wait until the kernel has let its lock go."""
        pid = self.pid()
        if not pid:
            return
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: self.pid() is None, "the killed daemon to be gone")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def answers(state: Path) -> bool:
    try:
        DaemonClient(state).info()
    except DaemonError:
        return False
    return True


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    yield d
    d.kill()


@pytest.fixture
def seeder() -> Iterator[Callable[[Path, Path], tuple[subprocess.Popen[str], int]]]:
    """``pyowtorrent seed`` on loopback in a process of its own; gives the process and its port."""
    procs: list[subprocess.Popen[str]] = []

    def start(torrent: Path, directory: Path) -> tuple[subprocess.Popen[str], int]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyowtorrent", "seed", str(torrent), str(directory), "--listen", "127.0.0.1", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        procs.append(proc)
        first = json.loads(read_line(proc, 30))
        assert first["event"] == "listening"
        return proc, int(first["port"])

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError("the process printed nothing in time")
        line = proc.stdout.readline()
    assert line, f"the process ended: rc={proc.wait()} {proc.stderr.read() if proc.stderr else ''}"
    return line


def torrent_file(tmp: Path, meta: Metainfo, name: str = "t.torrent") -> Path:
    path = tmp / name
    path.write_bytes(meta.to_bytes())
    return path


def complete(rows: list[dict[str, Any]], info_hash: str) -> bool:
    return any(r["info_hash"] == info_hash and r["state"] == "seeding" and r["progress"] == 1.0 for r in rows)


def test_start_add_status_stop_and_start_again_keeps_the_torrent_complete(daemon: Daemon, seeder: Any, tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"a.bin": 700_000, "sub/b.txt": 1234})
    torrent = torrent_file(tmp_path, meta)
    seed, port = seeder(torrent, seed_dir)
    out = tmp_path / "out"
    ih = meta.info_hash.hex()

    daemon.start()
    mode = os.stat(daemon.paths.socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon.state).st_mode) == 0o700

    r = daemon.cli("add", str(torrent), "-o", str(out), "--peer", f"127.0.0.1:{port}")
    assert ih in r.stdout
    deadline = time.monotonic() + 60
    while True:  # the CLI's own `status --json`, until complete
        rows = json.loads(daemon.cli("status", "--json").stdout)
        if complete(rows, ih):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.1)
    (row,) = rows
    assert REQUIRED_KEYS <= row.keys()
    assert row["name"] == "ds" and row["save_path"] == str(out) and row["bytes_done"] == row["bytes_total"] == meta.total_length
    assert same_tree(seed_dir / "ds", out / "ds")  # byte for byte

    seed.terminate()
    seed.wait(timeout=30)
    pid = daemon.pid()
    assert f"daemon {pid} stopped" in daemon.cli("daemon", "stop").stdout
    assert daemon.pid() is None and not daemon.paths.socket.exists()  # exited, and cleaned up after itself

    daemon.start()
    rows = daemon.wait_for(lambda rows: complete(rows, ih), "the torrent to be complete again, with no seeder")
    assert rows[0]["save_path"] == str(out)
    assert rows[0]["checked_bytes"] == 0  # resume data in the state directory vouched for every piece: no recheck
    assert (daemon.paths.resume / f"{ih}.resume.json").is_file() and not (out / ".pyowtorrent").exists()
    assert same_tree(seed_dir / "ds", out / "ds")
    log = daemon.paths.log.read_text()
    assert log.count("ready on") == 2 and "added ds" in log  # both runs logged to STATE_DIR/daemon.log


def test_commands_with_no_daemon_exit_nonzero_and_say_so(daemon: Daemon) -> None:
    daemon.paths.make_root()
    # A socket file left by a daemon that was killed: nobody listens on it.
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(daemon.paths.socket))
    s.close()
    for args in (["status"], ["status", "--json"], ["daemon", "stop"], ["pause", "abcdef"]):
        r = daemon.cli(*args, ok=False)
        assert r.returncode != 0, args
        assert f"no daemon running for {daemon.state}" in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    with pytest.raises(DaemonError, match="no daemon running"):
        DaemonClient(daemon.state).status()


def test_a_second_start_on_the_same_state_dir_fails_while_the_first_runs(daemon: Daemon) -> None:
    daemon.start()
    first = daemon.pid()
    r = daemon.cli("daemon", "start", "--listen", "127.0.0.1", ok=False)
    assert r.returncode != 0
    assert f"a daemon already runs for {daemon.state} (pid {first})" in r.stderr
    assert daemon.pid() == first
    assert DaemonClient(daemon.state).info()["pid"] == first  # the first one still answers


def test_stop_reaches_a_daemon_whose_socket_was_deleted(daemon: Daemon) -> None:
    daemon.start()
    pid = daemon.pid()
    daemon.paths.socket.unlink()
    r = daemon.cli("status", ok=False)
    assert r.returncode != 0 and f"(pid {pid}) does not answer" in r.stderr
    assert f"daemon {pid} stopped" in daemon.cli("daemon", "stop").stdout  # by SIGTERM to the lock's holder
    assert daemon.pid() is None


def test_kill_9_then_start_again_works_and_keeps_the_torrents(daemon: Daemon, tmp_path: Path) -> None:
    meta_a, _ = make_torrent(tmp_path / "a", {"x.bin": 100_000}, seed=1)
    meta_b, _ = make_torrent(tmp_path / "b", {"y.bin": 100_000}, seed=2)
    daemon.start()
    # Nobody has these: they stay downloading (and paused) at 0%.
    daemon.cli("add", str(torrent_file(tmp_path, meta_a, "a.torrent")), "-o", str(tmp_path / "out-a"))
    daemon.cli("add", str(torrent_file(tmp_path, meta_b, "b.torrent")), "-o", str(tmp_path / "out-b"), "--paused")
    daemon.kill()
    assert daemon.paths.socket.exists()  # left behind, as after any crash

    daemon.start()
    rows = daemon.wait_for(lambda rows: {r["state"] for r in rows} == {"downloading", "paused"}, "both torrents back")
    by_hash = {r["info_hash"]: r for r in rows}
    assert by_hash[meta_a.info_hash.hex()]["state"] == "downloading"
    assert by_hash[meta_a.info_hash.hex()]["save_path"] == str(tmp_path / "out-a")
    assert by_hash[meta_b.info_hash.hex()]["state"] == "paused"
    assert by_hash[meta_b.info_hash.hex()]["save_path"] == str(tmp_path / "out-b")


async def _verified_with_resume_data(meta: Metainfo, directory: Path) -> None:
    """Check a payload the way a download leaves it: resume data in ``directory/.pyowtorrent``."""
    async with Session(listen=None) as session:
        t = await session.add_torrent(meta, directory)
        await t.wait_done(30)


def test_pause_resume_and_remove_with_and_without_its_data(daemon: Daemon, tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"a.bin": 300_000, "b/c.txt": 999})
    torrent = torrent_file(tmp_path, meta)
    keep, drop = tmp_path / "keep", tmp_path / "drop"
    shutil.copytree(seed_dir, keep)
    make_payload(drop / "two", {"z.bin": 200_000}, seed=7)
    meta2 = create_torrent(drop / "two", piece_length=32768)
    ih, ih2 = meta.info_hash.hex(), meta2.info_hash.hex()
    daemon.start()
    daemon.cli("add", str(torrent), "-o", str(keep))
    daemon.cli("add", str(torrent_file(tmp_path, meta2, "two.torrent")), "-o", str(drop), "--no-seed")
    # --no-seed: once complete it pauses instead of seeding, and stays so.
    rows = daemon.wait_for(lambda rows: complete(rows, ih) and any(r["info_hash"] == ih2 and r["paused"] for r in rows),
                           "one seeding, the other complete and paused")
    assert {r["info_hash"]: (r["state"], r["progress"]) for r in rows}[ih2] == ("paused", 1.0)

    assert "paused ds" in daemon.cli("pause", ih[:8]).stdout  # a prefix of the info-hash
    rows = daemon.status()
    assert {r["info_hash"]: r["state"] for r in rows}[ih] == "paused"
    saved = json.loads(daemon.paths.state_file.read_text())["torrents"]
    assert {t["info_hash"]: t["paused"] for t in saved} == {ih: True, ih2: True}  # on disk before the answer

    daemon.cli("resume", "ds")  # by name
    assert {r["info_hash"]: r["state"] for r in daemon.status()}[ih] == "seeding"

    daemon.cli("remove", str(torrent))  # by its .torrent file; the data stays
    assert [r["info_hash"] for r in daemon.status()] == [ih2]
    assert same_tree(seed_dir / "ds", keep / "ds")
    assert not daemon.paths.torrent_file(ih).exists()

    daemon.cli("resume", ih2)  # complete, resumed by hand: it seeds now
    assert complete(daemon.status(), ih2)
    assert "deleted its data" in daemon.cli("remove", ih2, "--delete-data").stdout
    assert daemon.status() == []
    assert not (drop / "two" / "z.bin").exists()
    assert json.loads(daemon.paths.state_file.read_text())["torrents"] == []

    r = daemon.cli("pause", ih, ok=False)
    assert r.returncode != 0 and "no torrent" in r.stderr


def test_bad_requests_get_a_4xx_json_error_and_the_daemon_keeps_running(daemon: Daemon, tmp_path: Path) -> None:
    meta, _ = make_torrent(tmp_path, {"a.bin": 1000})
    good = base64.b64encode(meta.to_bytes()).decode()
    daemon.start()
    pid = daemon.pid()

    async def ask(method: str, path: str, body: bytes) -> tuple[int, Any]:
        connector = aiohttp.UnixConnector(path=str(daemon.paths.socket))
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.request(method, f"http://daemon/v1{path}", data=body,
                                    headers={"Content-Type": "application/json"}) as r:
                return r.status, await r.json(content_type=None)

    cases = [
        ("POST", "/torrents", b"{not json", 400, "not JSON"),
        ("POST", "/torrents", b"[1, 2]", 400, "JSON object"),
        ("POST", "/torrents", json.dumps({"torrent": "!!", "save_path": "/x"}).encode(), 400, "base64"),
        ("POST", "/torrents", json.dumps({"torrent": base64.b64encode(b"d4:spam").decode(), "save_path": "/x"}).encode(),
         400, "not a usable torrent"),
        ("POST", "/torrents", json.dumps({"torrent": good, "save_path": "relative/dir"}).encode(), 400, "absolute"),
        ("POST", "/torrents", json.dumps({"torrent": good, "save_path": "/x", "peers": [["h", "p"]]}).encode(), 400, "peer"),
        ("POST", "/torrents/pause", json.dumps({"torrent": "ab" * 20}).encode(), 404, "no torrent"),
        ("POST", "/torrents/remove", json.dumps({"torrent": 5}).encode(), 400, "'torrent' must be"),
        ("GET", "/no-such-thing", b"", 404, "Not Found"),
    ]
    for method, path, body, code, words in cases:
        status, doc = asyncio.run(ask(method, path, body))
        assert status == code and words in doc["error"], (path, body, status, doc)
    with socket.socket(socket.AF_UNIX) as raw:  # not HTTP at all
        raw.connect(str(daemon.paths.socket))
        raw.sendall(b"\x00\xffjunk\r\n\r\n")
        raw.recv(4096)

    assert daemon.pid() == pid
    assert daemon.status() == []  # nothing was added, and it still answers
    assert daemon.cli("status").returncode == 0


def test_status_watch_redraws_until_ctrl_c(daemon: Daemon, tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"a.bin": 100_000})
    daemon.start()
    daemon.cli("add", str(torrent_file(tmp_path, meta)), "-o", str(seed_dir))
    proc = subprocess.Popen([sys.executable, "-m", "pyowtorrent", "status", "--watch"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=daemon.env)
    try:
        frames = 0
        deadline = time.monotonic() + 30
        while frames < 2:  # the table, drawn a second time
            assert time.monotonic() < deadline
            if read_line(proc, 30).split()[:3] in (["NAME", "STATE", "PROGRESS"], ["ID", "NAME", "STATE"]):
                frames += 1
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130)
    assert "Traceback" not in err


def test_python_client_hands_over_a_verified_dataset_without_a_recheck(daemon: Daemon, tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.zip": 400_000})
    asyncio.run(_verified_with_resume_data(meta, seed_dir))
    daemon.start()
    client = DaemonClient(daemon.state)
    assert client.add(meta.to_bytes(), seed_dir)["added"] is True
    rows = daemon.wait_for(lambda rows: complete(rows, meta.info_hash.hex()), "seeding")
    assert rows[0]["checked_bytes"] == 0  # the download's resume data vouched for it: nothing read
    assert client.add(meta.to_bytes(), seed_dir)["added"] is False  # handing it over twice is harmless
    with pytest.raises(DaemonError, match="already in the daemon"):
        client.add(meta.to_bytes(), tmp_path / "elsewhere")


def test_status_table_reads_at_a_glance() -> None:
    rows = [
        {"info_hash": "ab" * 20, "name": "Merged_Nuclei_Stained_Worm_dataset_with_a_very_long_name.zip",
         "state": "downloading", "progress": 0.5, "download_rate": 1048576.0, "upload_rate": 2048.0, "peers": 3,
         "eta": 185.0, "error": None},
        {"info_hash": "cd" * 20, "name": "other", "state": "error", "progress": 0.0, "download_rate": 0.0,
         "upload_rate": 0.0, "peers": 0, "eta": None, "error": "cannot save piece 3: disk full"},
    ]
    table = render_table(rows, 80)
    lines = table.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].split()[:3] == ["NAME", "STATE", "PROGRESS"]
    assert "Merged_Nuclei" in lines[1] and "…" in lines[1]  # truncated to fit
    assert "[###---]  50.0%" in lines[1] and "1.00 MiB/s" in lines[1] and "2.00 KiB/s" in lines[1]
    assert lines[1].endswith("3m05s")
    assert lines[2].endswith("-") and "error: cannot save piece 3: disk full" in lines[3]
    wide = render_table(rows, 160).splitlines()
    assert wide[1].startswith("abababab") and "[##########----------]" in wide[1]
    assert render_table([], 80).startswith("no torrents")


def test_daemon_run_stays_in_the_foreground_until_sigterm(daemon: Daemon) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "pyowtorrent", "daemon", "run", "--listen", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon.env)
    try:
        wait_until(lambda: proc.poll() is not None or daemon.pid() == proc.pid, "the daemon to take its lock")
        assert daemon.pid() == proc.pid  # this very process is the daemon: nothing forked away
        wait_until(lambda: answers(daemon.state), "the daemon to answer")
        assert DaemonClient(daemon.state).info()["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "ready on" in err  # a service manager keeps its standard error as the log
    assert daemon.pid() is None and not daemon.paths.socket.exists()
