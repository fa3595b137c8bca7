"""What the benchmarks share: sizes, the generated payload, child environments, logging."""

from __future__ import annotations

import argparse
import os
import re
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
# The payload is one random block repeated (os.urandom for every byte of a
# 2 GiB payload would take longer than the measurements), stamped every
# 16 KiB (the smallest legal piece) with its file and offset, so that no two
# pieces or blocks are equal and a mix-up could not pass.
BLOCK = 16 * MiB
STAMP_EVERY = 16 * KiB


def parse_size(text: str) -> int:
    """``"1GiB"``, ``"256KiB"``, ``"2G"``, ``"1000000"`` → bytes (K/M/G are binary too)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    scale = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1 << 40}[m.group(2).lower()]
    size = int(float(m.group(1)) * scale)
    if size <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return size


def human(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.2f} {unit}"
    return f"{n:.0f} B"


def file_sizes(total: int, count: int, small: Sequence[int] = ()) -> list[int]:
    """``count`` file sizes summing to ``total``: the ``small`` ones first, then growing big ones.

    No boundary between files is a multiple of 16 KiB, so with any piece
    length every boundary falls inside a piece, which is then read from two
    (or, around small files, three) files.
    """
    sizes = [s for s in small if s * 8 < total][: max(0, count - 1)]
    rest = total - sum(sizes)
    weights = list(range(1, count - len(sizes) + 1))
    for w in weights[:-1]:
        size = max(1, rest * w // sum(weights))
        if (sum(sizes) + size) % STAMP_EVERY == 0:
            size -= 1
        sizes.append(size)
    sizes.append(total - sum(sizes))
    return sizes


def write_file(path: Path, size: int, block: bytes, file_index: int) -> None:
    buf = bytearray(block)
    done = 0
    with open(path, "wb", buffering=0) as f:
        while done < size:
            n = min(len(buf), size - done)
            for off in range(0, n, STAMP_EVERY):
                buf[off : off + 16] = struct.pack("<QQ", file_index, done + off)
            f.write(memoryview(buf)[:n])
            done += n


def make_payload(root: Path, name: str, sizes: Sequence[int]) -> tuple[Path, list[Path]]:
    """Write the payload under ``root``: the file ``name`` for one size, else a directory of files.

    Returns the payload (what a torrent is made of) and its files in torrent order.
    """
    block = os.urandom(BLOCK)
    if len(sizes) == 1:
        path = root / f"{name}.bin"
        write_file(path, sizes[0], block, 0)
        return path, [path]
    top = root / name
    top.mkdir()
    files = []
    for i, size in enumerate(sizes):
        path = top / f"f{i:02d}_{human(size).replace(' ', '')}.bin"
        write_file(path, size, block, i)
        files.append(path)
    return top, files


def read_all(files: Sequence[Path]) -> int:
    """Read every byte (to warm the page cache); returns how many there were."""
    view = memoryview(bytearray(4 * MiB))
    total = 0
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total


def child_env() -> dict[str, str]:
    """The environment for a child process: this checkout first on the path, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def in_work_dir(args: argparse.Namespace, prefix: str, kept: str, run: Callable[[Path], int]) -> int:
    """Run ``run(root)`` in a fresh temp directory; keep it with --keep, keep the logs on failure or --profile."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix=prefix, dir=args.dir)).resolve()
    rc = 2
    try:
        rc = run(root)
        return rc
    finally:
        if args.keep:
            log(f"kept {root}")
        elif args.profile or rc == 1:
            shutil.rmtree(root / "seed", ignore_errors=True)
            what = "profiles, " if args.profile else ""
            log(f"kept the {what}{kept}' stderr logs and the .torrent in {root} (the payload is deleted)")
        else:
            shutil.rmtree(root, ignore_errors=True)


def seed_payload(args: argparse.Namespace, root: Path, name: str) -> tuple[Path, Any]:
    """Write the payload under ``root/seed``, sync it, make its .torrent (no tracker) and warm the page cache."""
    import time

    from pyowtorrent.storage.create import create_torrent

    seed_dir = root / "seed"
    seed_dir.mkdir()
    log(f"writing {human(args.size)} in {args.files} file{'s' * (args.files > 1)} to {root}")
    t0 = time.perf_counter()
    payload, files = make_payload(seed_dir, f"{name}_payload", file_sizes(args.size, args.files))
    os.sync()  # write-back now, not during the timed transfers
    log(f"written and synced in {time.perf_counter() - t0:.1f} s; making the .torrent")
    meta = create_torrent(payload, piece_length=args.piece_length, creation_date=None)
    torrent = root / f"{name}.torrent"
    torrent.write_bytes(meta.to_bytes())
    if read_all(files) != args.size:  # warm the page cache for the seeders and servers
        raise SystemExit("payload has the wrong size")
    return seed_dir, meta


# ---------------------------------------------------------------------------
# A tracker on loopback (bench_swarm.py --leechers)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now (for programs that cannot be told to pick one)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalTracker:
    """An HTTP tracker on 127.0.0.1 serving one info-hash, in a process of its own.

    Debian's ``opentracker`` when it is on PATH (the tracker the issue measured
    with), else pyowtorrent's own (``python -m pyowtorrent tracker``); ``kind``
    says which.  Debian builds opentracker with a whitelist, so the info-hash is
    listed before it starts; it chroots into ``home`` and drops to ``nobody``,
    so the list's path is relative to ``home`` (as tests/conftest.py starts it).
    A fresh one per swarm: it would otherwise hand out the last swarm's peers.
    """

    def __init__(self, home: Path, info_hash: bytes, torrent: Path) -> None:
        import shutil
        import subprocess
        import time

        self.info_hash = info_hash
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o755)
        self.log_path = home / "tracker.log"
        log_file = open(self.log_path, "wb")
        binary = shutil.which("opentracker")
        if binary is not None:
            self.kind = "opentracker"
            (home / "whitelist.txt").write_text(info_hash.hex() + "\n")
            (home / "opentracker.conf").write_text("access.whitelist whitelist.txt\n")
            port = free_port()
            cmd = [binary, "-f", str(home / "opentracker.conf"), "-i", "127.0.0.1", "-p", str(port), "-P", str(port)]
            if os.geteuid() == 0:  # it chroots and drops privileges only when it can
                cmd += ["-d", str(home), "-u", "nobody"]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
            self.url = f"http://127.0.0.1:{port}/announce"
        else:
            self.kind = "pyowtorrent tracker (opentracker is not on PATH)"
            cmd = [sys.executable, "-m", "pyowtorrent", "tracker", "--listen", "127.0.0.1", "--port", "0"]
            cmd += ["--allow", str(torrent)]
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file, env=child_env(), cwd=REPO
            )
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().decode()  # "announce URL: http://127.0.0.1:P/announce"
            if not line.startswith("announce URL: "):
                self.stop()
                raise RuntimeError(f"pyowtorrent tracker did not start: {line!r}, {self.log_path.read_text()[-500:]}")
            self.url = line.split(": ", 1)[1].strip()
        log_file.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.seeders()
                return
            except OSError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.kind} did not start: {exc}; {self.log_path.read_text()[-500:]}") from exc
                time.sleep(0.05)

    def scrape(self) -> dict[bytes, Any]:
        """The tracker's scrape entry for our info-hash (empty before anyone announced)."""
        import urllib.parse
        import urllib.request

        from pyowtorrent.metainfo.bencoding import decode

        base = self.url.rsplit("/announce", 1)[0]
        url = f"{base}/scrape?info_hash={urllib.parse.quote_from_bytes(self.info_hash)}"
        with urllib.request.urlopen(url, timeout=2) as r:
            doc = decode(r.read())
        files = doc.get(b"files", {}) if isinstance(doc, dict) else {}
        entry = files.get(self.info_hash, {})
        return entry if isinstance(entry, dict) else {}

    def seeders(self) -> int:
        return int(self.scrape().get(b"complete", 0))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
