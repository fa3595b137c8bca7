"""``pyowtorrent download`` and ``seed`` as processes: exit codes, signals, and a kill -9 mid-download."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .conftest import REPO
from .engine_util import make_torrent, same_tree

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pyowtorrent", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def read_until(proc: subprocess.Popen[str], want: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
    """Read the process's JSON lines until one satisfies ``want``; fail on EOF or after ``timeout``."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError("timed out waiting for the process to report")
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"process ended (rc={proc.wait()}): {proc.stderr.read() if proc.stderr else ''}")
            doc = json.loads(line)
            if want(doc):
                return doc
    finally:
        sel.close()


def seeder(torrent: Path, directory: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = start("seed", str(torrent), str(directory), "--listen", "127.0.0.1", "--json", *extra)
    first = read_until(proc, lambda d: True)
    assert first["event"] == "listening"  # the listen address comes first
    return proc, first["port"]


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_download_exits_0_once_verified_and_seed_stops_cleanly_on_signals(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"a.bin": 500_000, "b/c.txt": 1234})
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(meta.to_bytes())
    seed, port = seeder(torrent, seed_dir)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pyowtorrent", "download", str(torrent), "-o", str(tmp_path / "out"),
             "--peer", f"127.0.0.1:{port}", "--listen", "127.0.0.1", "--timeout", "60"],
            capture_output=True, text=True, env=ENV, timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert "done: ds verified on disk" in r.stdout
        assert same_tree(seed_dir / "ds", tmp_path / "out" / "ds")
    finally:
        assert stop(seed, signal.SIGTERM) == 0  # SIGTERM: clean shutdown, exit 0
    assert (seed_dir / ".pyowtorrent" / f"{meta.info_hash.hex()}.resume.json").is_file()
    seed, port = seeder(torrent, seed_dir)
    assert stop(seed, signal.SIGINT) == 130  # Ctrl-C: exit 130


def test_download_with_no_peer_times_out_with_exit_1(tmp_path: Path) -> None:
    meta, _ = make_torrent(tmp_path, {"a.bin": 1000})
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(meta.to_bytes())
    r = subprocess.run(
        [sys.executable, "-m", "pyowtorrent", "download", str(torrent), "-o", str(tmp_path / "out"),
         "--listen", "127.0.0.1", "--timeout", "1"],
        capture_output=True, text=True, env=ENV, timeout=60,
    )
    assert r.returncode == 1 and "not done after 1 s" in r.stderr


def test_kill_9_mid_download_loses_at_most_the_pieces_in_flight(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 6_000_000}, piece_length=65536)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(meta.to_bytes())
    out = tmp_path / "out"
    # Slow enough (2 MB/s) that the kill falls in the middle.
    seed, port = seeder(torrent, seed_dir, "--upload-limit", "2000000")
    args = ["download", str(torrent), "-o", str(out), "--peer", f"127.0.0.1:{port}", "--listen", "127.0.0.1", "--json"]
    try:
        leech = start(*args)
        status = read_until(leech, lambda d: d["event"] == "status" and d["pieces"] >= 25)
        leech.kill()  # SIGKILL: no clean-up of any kind
        leech.wait(timeout=30)
        verified_before_kill = status["pieces"]
        assert verified_before_kill < meta.num_pieces

        leech = start(*args)
        first = read_until(leech, lambda d: d["event"] == "status")
        assert first["pieces"] >= verified_before_kill  # every piece reported verified survived
        read_until(leech, lambda d: d["event"] == "done")
        assert leech.wait(timeout=30) == 0
    finally:
        stop(seed)
    assert same_tree(seed_dir / "ds", out / "ds")


def test_disk_full_is_a_clear_error_and_no_piece_is_reported_done_beyond_it(tmp_path: Path) -> None:
    import resource

    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 3_000_000}, piece_length=65536)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(meta.to_bytes())
    seed, port = seeder(torrent, seed_dir)

    def small_disk() -> None:
        # The kernel refuses writes past 1 MB in this process (EFBIG), as a full disk would.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    try:
        r = subprocess.run(
            [sys.executable, "-m", "pyowtorrent", "download", str(torrent), "-o", str(tmp_path / "out"),
             "--peer", f"127.0.0.1:{port}", "--listen", "127.0.0.1", "--timeout", "60", "--json"],
            capture_output=True, text=True, env=ENV, timeout=120, preexec_fn=small_disk,
        )
    finally:
        stop(seed)
    assert r.returncode == 1
    assert "cannot save piece" in r.stderr and "Traceback" not in r.stderr
    statuses = [json.loads(line) for line in r.stdout.splitlines() if '"status"' in line]
    assert statuses and statuses[-1]["state"] == "error"
    assert statuses[-1]["pieces"] * 65536 <= 1_000_000  # nothing past the failure counted as had


def test_download_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    from .test_cli import run_on_terminal

    meta, seed_dir = make_torrent(tmp_path, {"a.bin": 300_000})
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(meta.to_bytes())
    seed, port = seeder(torrent, seed_dir)
    try:
        rc, out, terminal = run_on_terminal(
            "-m", "pyowtorrent", "download", str(torrent), "-o", str(tmp_path / "out"),
            "--peer", f"127.0.0.1:{port}", "--listen", "127.0.0.1", "--timeout", "60",
        )
    finally:
        stop(seed)
    assert rc == 0, terminal
    assert b"listening on 127.0.0.1:" in out and b"done: ds verified on disk" in out
    assert "100%" in terminal and "peers=" in terminal and "Traceback" not in terminal
    assert same_tree(seed_dir / "ds", tmp_path / "out" / "ds")


def test_sigterm_while_a_handshake_is_pending_exits_cleanly_without_a_traceback(tmp_path: Path) -> None:
    """A seeder with an incoming connection stuck mid-handshake, and a downloader dialling a peer
    that never answers: SIGTERM ends both with status 0 and nothing on stderr but our own lines."""
    import socket

    meta, seed_dir = make_torrent(tmp_path, {"data.bin": 200_000})
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(meta.to_bytes())
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never answers
    proc, port = seeder(torrent, seed_dir)
    half = socket.create_connection(("127.0.0.1", port))
    try:
        half.sendall(b"\x13BitTorrent proto")  # half a handshake, then nothing
        leech = start("download", str(torrent), "-o", str(tmp_path / "out"), "--listen", "127.0.0.1", "--json",
                      "--peer", f"127.0.0.1:{silent.getsockname()[1]}")
        read_until(leech, lambda d: d["event"] == "status")  # running, its dial pending
        read_until(proc, lambda d: d["event"] == "status")
        assert stop(leech) == 0 and stop(proc) == 0
        for p in (leech, proc):
            assert p.stderr is not None
            err = p.stderr.read()
            assert "Traceback" not in err and "Error" not in err, err
    finally:
        half.close()
        silent.close()


def test_download_takes_its_source_and_directory_from_the_config_file_and_logs_with_v(tmp_path: Path) -> None:
    meta, seed_dir = make_torrent(tmp_path, {"a.bin": 200_000})
    torrents = tmp_path / "torrents"
    torrents.mkdir()
    torrent = torrents / "ds.torrent"
    torrent.write_bytes(meta.to_bytes())
    config = tmp_path / "config.toml"
    config.write_text(
        f'[session]\nlisten = ["127.0.0.1"]\n[paths]\ndownload_dir = "{tmp_path / "fromconfig"}"\n'
        f'[sources]\ntorrent_source = "{torrents}"\n'
    )
    seed, port = seeder(torrent, seed_dir)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pyowtorrent", "download", "ds", "--peer", f"127.0.0.1:{port}", "--timeout", "60",
             "--json", "-v"],
            capture_output=True, text=True, env={**ENV, "PYOWTORRENT_CONFIG": str(config)}, timeout=120,
        )
        assert r.returncode == 0, r.stderr
    finally:
        stop(seed)
    # The name was resolved in the configured directory, the payload went to the configured place,
    # the session listened where the file said, and -v showed the engine's INFO lines.
    assert same_tree(seed_dir / "ds", tmp_path / "fromconfig" / "ds")
    listening = [json.loads(line) for line in r.stdout.splitlines() if '"listening"' in line]
    assert [d["host"] for d in listening] == ["127.0.0.1"]
    assert " INFO pyowtorrent." in r.stderr


def test_a_bad_config_file_is_a_clear_error_naming_its_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[session]\nport = \"six\"\n")
    r = subprocess.run(
        [sys.executable, "-m", "pyowtorrent", "download", "x.torrent"],
        capture_output=True, text=True, env={**ENV, "PYOWTORRENT_CONFIG": str(config)}, timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {config}, line 2: session.port: must be a whole number"
