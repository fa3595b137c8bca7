"""The command-line tools, run as a user runs them: in a subprocess."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from pyowtorrent.cli import GC_THRESHOLD
from pyowtorrent.metainfo.bencoding import encode
from pyowtorrent.storage.create import create_torrent

from .conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV, timeout=120, **kw)


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "ds"
    (root / "sub").mkdir(parents=True)
    # A zip's own magic first: random bytes begin with "d" one time in 256, and then a test that gives
    # this file as the .torrent is told of a bad dictionary key instead of "not a bencoded dictionary".
    (root / "big.zip").write_bytes(b"PK\x03\x04" + os.urandom(200_000 - 4))
    (root / "sub" / "small.txt").write_bytes(b"tiny")
    torrent = tmp_path / "ds.torrent"
    torrent.write_bytes(create_torrent(root, piece_length=16384).to_bytes())
    return torrent, root


def test_verify_clears_a_good_payload(dataset: tuple[Path, Path]) -> None:
    torrent, root = dataset
    r = run("-m", "pyowtorrent.verify", str(torrent), str(root))
    assert r.returncode == 0
    assert "DATA INTEGRITY CLEARED!" in r.stdout
    assert r.stderr == ""  # no progress bar when stderr is not a terminal


def test_verify_names_failed_pieces_files_and_byte_ranges(dataset: tuple[Path, Path]) -> None:
    torrent, root = dataset
    with open(root / "big.zip", "r+b") as f:
        f.seek(20000)
        f.write(b"\xff\xfe")
    (root / "sub" / "small.txt").unlink()
    r = run("-m", "pyowtorrent.verify", str(torrent), str(root))
    assert r.returncode == 1
    assert "CLEARED" not in r.stdout
    assert "file ds/sub/small.txt: missing" in r.stdout
    assert "piece 1 FAILED (hash mismatch): ds/big.zip bytes 16384-32767" in r.stdout
    assert "ds/sub/small.txt" in r.stdout.splitlines()[-2]  # the last piece covers the missing file
    assert "FAILED." in r.stdout.splitlines()[-1]


def test_verify_reports_a_payload_far_shorter_than_its_torrent_in_one_line(tmp_path: Path) -> None:
    size, piece_length = 1 << 40, 1 << 22  # a 1 TiB torrent over a 1000-byte file
    info = {b"name": b"big.bin", b"length": size, b"piece length": piece_length, b"pieces": bytes(20) * (size // piece_length)}
    (tmp_path / "big.torrent").write_bytes(encode({b"info": info}))
    (tmp_path / "big.bin").write_bytes(b"x" * 1000)
    r = run("-m", "pyowtorrent.verify", str(tmp_path / "big.torrent"), str(tmp_path / "big.bin"))
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines() == [
        f"file big.bin: short file (1000 of {size} bytes)",
        f"pieces 0-262143 FAILED (big.bin: short file (1000 of {size} bytes)): big.bin bytes 0-{size - 1}",
        "262144 of 262144 pieces FAILED.",
    ]


def test_verify_json_report(dataset: tuple[Path, Path]) -> None:
    torrent, root = dataset
    with open(root / "big.zip", "r+b") as f:
        f.seek(100)
        f.write(b"!")
    r = run("-m", "pyowtorrent.verify", "--json", str(torrent), str(root))
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["num_pieces"] == 13 and doc["pieces_passed"] == 12
    assert doc["failed_runs"] == [
        {"first": 0, "last": 0, "reason": "hash mismatch", "files": [{"path": "ds/big.zip", "start": 0, "end": 16384}]}
    ]


@pytest.mark.parametrize(
    "make_args,message",
    [
        (lambda t, r: [str(t.parent / "nope.torrent"), str(r)], "cannot read"),
        (lambda t, r: [str(r / "big.zip"), str(r)], "not a bencoded dictionary"),
        (lambda t, r: [str(t), str(r.parent / "absent")], "no such file or directory"),
        (lambda t, r: [str(t), str(r / "big.zip")], "give the directory"),
    ],
)
def test_verify_unusable_input_is_one_line_and_exit_2(dataset: tuple[Path, Path], make_args, message: str) -> None:
    torrent, root = dataset
    r = run("-m", "pyowtorrent.verify", *make_args(torrent, root))
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_the_command_keeps_its_start_up_out_of_the_collector_and_collects_less_often(
    dataset: tuple[Path, Path],
) -> None:
    torrent, root = dataset
    state = "json.dumps([code, gc.isenabled(), gc.get_threshold()[0], gc.get_freeze_count()])"
    # The process's entry point (the script, python -m) tunes the collector for itself...
    probe = (
        "import gc, sys, json\n"
        "from pyowtorrent.cli import GC_THRESHOLD, entry\n"
        f"sys.argv = ['pyowtorrent', 'verify', {str(torrent)!r}, {str(root)!r}]\n"
        "code = entry()\n"
        f"print({state})\n"
    )
    r = run("-c", probe)
    assert r.returncode == 0, r.stderr
    code, enabled, threshold, frozen = json.loads(r.stdout.strip().splitlines()[-1])
    assert code == 0 and enabled and threshold == GC_THRESHOLD
    assert frozen > 10_000  # the modules, classes and parser made at start-up
    # ...main() called in someone else's process leaves their collector as it was.
    probe = (
        "import gc, sys, json\n"
        "from pyowtorrent.cli import main\n"
        "gc.disable()\n"
        f"code = main(['verify', {str(torrent)!r}, {str(root)!r}])\n"
        f"print({state})\n"
    )
    r = run("-c", probe)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [0, False, 700, 0]


def test_verify_imports_only_what_it_needs(dataset: tuple[Path, Path]) -> None:
    torrent, root = dataset
    probe = (
        "import runpy, sys, json\n"
        f"sys.argv = ['verify', {str(torrent)!r}, {str(root)!r}]\n"
        "try:\n    runpy.run_module('pyowtorrent.verify', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    r = run("-c", probe)
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stderr.strip().splitlines()[-1]))
    # What the interpreter and its site hooks load anyway is not ours to answer for.
    bare = run("-c", "import sys, json; print(json.dumps(sorted(sys.modules)), file=sys.stderr)")
    ours = loaded - set(json.loads(bare.stderr.strip().splitlines()[-1]))
    # dataclasses (with inspect) alone cost ~8 ms of every run's start-up.
    unwanted = {"aiohttp", "aiofiles", "asyncio", "googleapiclient", "google", "tqdm", "libtorrent", "dataclasses"}
    assert sorted(m for m in ours if m.split(".")[0] in unwanted) == []


def modules_after(*lines: str) -> list[str]:
    """The modules a fresh interpreter has loaded once it ran ``lines``."""
    probe = "\n".join([*lines, "import json, sys", "print(json.dumps(sorted(sys.modules)), file=sys.stderr)", ""])
    r = run("-c", probe)
    assert r.returncode == 0, r.stderr
    loaded: list[str] = json.loads(r.stderr.strip().splitlines()[-1])
    return loaded


def test_the_command_line_is_built_without_the_http_server_or_the_google_and_daemon_clients() -> None:
    # Every command builds the whole parser first: what that imports delays each download's start
    # (aiohttp's server and client alone took 0.17 s of a 0.35 s start-up).
    loaded = modules_after("from pyowtorrent.cli import build_parser", "build_parser().parse_args(['download', 'x.torrent'])")
    heavy = {"aiohttp", "googleapiclient", "google_auth_oauthlib", "pyowtorrent.service.app", "pyowtorrent.daemon.client"}
    # Nor what a download may never need: the Drive source, a TOML parser for a config file that is
    # not there, RC4 for a handshake that may never be encrypted (~15 ms of start-up together).
    heavy |= {"pyowtorrent.sources.gdrive", "tomllib", "cryptography"}
    assert [m for m in loaded if m in heavy or m.split(".")[0] in heavy] == []


def test_a_session_starts_without_importing_what_only_an_encrypted_handshake_needs() -> None:
    loaded = modules_after(
        "import asyncio",
        "import pyowtorrent.api",
        "from pyowtorrent.engine.session import Session",
        "async def main():\n    async with Session(listen='127.0.0.1', encryption='enabled'):\n        pass",
        "asyncio.run(main())",
    )
    assert [m for m in loaded if m.split(".")[0] == "cryptography"] == []


def run_on_terminal(*args: str) -> tuple[int, bytes, str]:
    """Run ``python ARGS`` with stderr on a pseudo-terminal 100 columns wide: (rc, stdout, what the terminal got)."""
    import threading

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:  # read as it comes, so a chatty child never blocks on a full terminal
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal's far side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=slave, env=ENV)
        os.close(slave)
        out, _ = proc.communicate(timeout=120)
    finally:
        reader.join(timeout=30)
        os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def test_verify_shows_a_progress_bar_on_a_terminal(dataset: tuple[Path, Path]) -> None:
    torrent, root = dataset
    rc, out, terminal = run_on_terminal("-m", "pyowtorrent.verify", str(torrent), str(root))
    assert rc == 0 and b"DATA INTEGRITY CLEARED!" in out
    assert "verifying" in terminal and "100%" in terminal and "B/s" in terminal


def test_create_info_verify_round_trip(tmp_path: Path) -> None:
    payload = tmp_path / "data.zip"
    payload.write_bytes(os.urandom(50_000))
    out = tmp_path / "data.torrent"
    r = run(
        "-m", "pyowtorrent", "create", str(payload), "-o", str(out), "--piece-length", "16k",
        "--tracker", "udp://tracker.example:6969/announce", "--web-seed", "http://files.example/data.zip",
        "--private", "--comment", "v1 of the data", "--no-date",
    )
    assert r.returncode == 0, r.stderr
    info = run("-m", "pyowtorrent", "info", str(out), "--json")
    doc = json.loads(info.stdout)
    assert doc["name"] == "data.zip" and doc["total_length"] == 50_000 and doc["num_pieces"] == 4
    assert doc["piece_length"] == 16384 and doc["private"] is True
    assert doc["trackers"] == [["udp://tracker.example:6969/announce"]]
    assert doc["web_seeds"] == ["http://files.example/data.zip"]
    assert doc["files"] == [{"path": "data.zip", "length": 50_000}]
    assert doc["magnet"].startswith("magnet:?xt=urn:btih:" + doc["info_hash"])
    assert doc["info_hash"] in r.stdout
    text = run("-m", "pyowtorrent", "info", str(out))
    assert "name:         data.zip" in text.stdout and "private:      yes" in text.stdout
    v = run("-m", "pyowtorrent", "verify", str(out), str(payload))
    assert v.returncode == 0 and "DATA INTEGRITY CLEARED!" in v.stdout
    again = tmp_path / "again.torrent"
    run("-m", "pyowtorrent", "create", str(payload), "-o", str(again), "--piece-length", "16k",
        "--tracker", "udp://tracker.example:6969/announce", "--web-seed", "http://files.example/data.zip",
        "--private", "--comment", "v1 of the data", "--no-date")
    assert again.read_bytes() == out.read_bytes()


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    r = run("-m", "pyowtorrent", "info", str(tmp_path / "missing.torrent"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    r = run("-m", "pyowtorrent", "create", str(tmp_path / "missing"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    r = run("-m", "pyowtorrent", "demo", "--size", "2m")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pieces good" in r.stdout and "demo complete" in r.stdout
