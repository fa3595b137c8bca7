from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
# The project's shared material sits beside the checkout (CI lays it there too).
SHARED = Path(os.environ.get("PYOWTORRENT_SHARED", REPO.parent / "shared"))
CONFORMANCE = SHARED / "conformance"


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    if not (CONFORMANCE / "libtorrent-torrents.json").is_file():
        pytest.fail(f"conformance suite not found at {CONFORMANCE}: set PYOWTORRENT_SHARED to the shared/ folder")
    return CONFORMANCE


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def opentracker(tmp_path: Path) -> Iterator[Callable[[bytes], tuple[int, int]]]:
    """Start opentracker on loopback serving one info-hash; gives its (http port, udp port).

    Debian builds opentracker with a whitelist, so the info-hash is listed
    before it starts; it chroots into its directory, so the list's path is
    relative to it.  A fresh one per test: it remembers peers for half an hour.
    """
    binary = shutil.which("opentracker")
    if binary is None:
        pytest.fail("opentracker is not installed: the README's test command installs it (Debian package 'opentracker')")
    procs: list[subprocess.Popen[bytes]] = []

    def start(info_hash: bytes) -> tuple[int, int]:
        home = tmp_path / "opentracker"
        home.mkdir()
        home.chmod(0o755)
        (home / "whitelist.txt").write_text(info_hash.hex() + "\n")
        (home / "opentracker.conf").write_text("access.whitelist whitelist.txt\n")
        tcp, udp = free_port(), free_port(socket.SOCK_DGRAM)
        cmd = [binary, "-f", str(home / "opentracker.conf"), "-i", "127.0.0.1", "-p", str(tcp), "-P", str(udp)]
        proc = subprocess.Popen([*cmd, "-d", str(home), "-u", "nobody"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", tcp), timeout=1).close()
                return tcp, udp
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode() if proc.stdout and proc.poll() is not None else ""
                    pytest.fail(f"opentracker did not start: {out}")
                time.sleep(0.05)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)
