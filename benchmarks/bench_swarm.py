"""Swarms on loopback: pyowtorrent against libtorrent, as leechers and as seeders.

One run generates a payload and its .torrent, then transfers it over
127.0.0.1 from one seeder process to one leecher process, four ways:

* ``a``: libtorrent seeder → libtorrent leecher, **the baseline**;
* ``b``: libtorrent seeder → pyowtorrent leecher (``python -m pyowtorrent download``);
* ``c``: pyowtorrent seeder (``python -m pyowtorrent seed``) → libtorrent leecher;
* ``d``: pyowtorrent seeder → pyowtorrent leecher.

Each peer is its own process (libtorrent runs in a helper mode of this
script, ``--lt-seed`` / ``--lt-leech``), so CPU time and memory are per
process.  For each case it reports the wall time from the leecher's spawn to
its verified-complete event, MB/s, CPU seconds per GiB of the leecher and of
the seeder, peak RSS, and the throughput as a ratio to case ``a``.

Two more shapes of the same cases:

* ``--leechers N``: one seeder and N leechers spawned together, all finding
  one another through a fresh tracker on loopback (opentracker, else
  pyowtorrent's own), plus case ``m`` (a libtorrent seeder, our leechers and
  libtorrent's in turn).  Aggregate and per-leecher MB/s, CPU per GiB, peak
  RSS, and who sent whom how many bytes (the kernel's TCP counts, ``ss``).
* ``--delay-ms D [--rate-mbit R]``: the leecher reaches the seeder through
  ``_proxy.py``, a process that delays each direction by D ms and caps it at
  R Mbit/s: a distant link, where request pipelining decides throughput.

``--lt-encryption default`` leaves libtorrent's MSE/PE policies as clients
ship them (it then dials encrypted first).  Every download is hashed against
the torrent after its case.

Run ``python benchmarks/bench_swarm.py --help`` for the options; see
``benchmarks/README.md`` for how to read the tables.  Needs the ``libtorrent``
wheel (benchmark-only dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import (  # noqa: E402  (benchmarks/, beside this script)
    GiB,
    KiB,
    MiB,
    REPO,
    LocalTracker,
    child_env,
    human,
    in_work_dir,
    log,
    parse_size,
    seed_payload,
)

SELF = str(Path(__file__).resolve())
# Run against this checkout whether or not pyowtorrent is installed.
sys.path.insert(0, str(REPO))

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_EVERY = 0.1  # seconds between /proc memory samples

# The targets.
TARGET_RATE_RATIO = 0.5  # of the libtorrent → libtorrent rate, for our leecher and for our seeder
TARGET_LEECHER_RSS_MIB = 150
TARGET_SWARM_RATIO = 0.9  # --leechers N: our leechers' aggregate against libtorrent's, from the same seeder
TARGET_PROXY_RATIO = 1.0  # --delay-ms: our leecher against libtorrent's through the same proxy

# The settings of lt.high_performance_seed() that matter for one connection
# (the rest are about thousands of torrents and peers).
HIGH_PERFORMANCE_KEYS = {
    "max_out_request_queue", "max_peer_recv_buffer_size", "send_buffer_low_watermark",
    "send_buffer_watermark", "send_buffer_watermark_factor", "send_not_sent_low_watermark",
    "max_queued_disk_bytes", "suggest_mode", "checking_mem_usage",
}  # fmt: skip

CASES = {
    "a": ("libtorrent", "libtorrent"),
    "b": ("libtorrent", "pyowtorrent"),
    "c": ("pyowtorrent", "libtorrent"),
    "d": ("pyowtorrent", "pyowtorrent"),
}


# ---------------------------------------------------------------------------
# libtorrent helper modes: one session per process, JSON lines like pyowtorrent's


def lt_settings(port: int, preset: str = "default", encryption: str = "off") -> dict[str, Any]:
    """libtorrent's settings for one benchmark peer.

    ``encryption``: ``off`` dials plaintext (accepting either), the benchmark's
    historical setting; ``default`` leaves libtorrent's own policies, as
    qBittorrent and Deluge ship them: it dials with MSE/PE first.
    """
    import libtorrent as lt

    base: dict[str, Any] = {}
    if preset == "high-performance":
        # libtorrent's own preset for a fast seed: deeper send buffers, longer request queues.
        base = {k: v for k, v in lt.high_performance_seed().items() if k in HIGH_PERFORMANCE_KEYS}
    settings = base | {
        "listen_interfaces": f"127.0.0.1:{port}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # pyowtorrent speaks plain BitTorrent over TCP: so does the baseline.
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        # Every peer of a swarm shares 127.0.0.1 (they differ by port): without this libtorrent
        # keeps one connection per IP.  No effect with one peer.
        "allow_multiple_connections_per_ip": True,
        "alert_mask": int(lt.alert.category_t.status_notification | lt.alert.category_t.error_notification),
    }
    if encryption == "off":
        settings["out_enc_policy"] = int(lt.enc_policy.disabled)
        settings["in_enc_policy"] = int(lt.enc_policy.enabled)
    return settings


def lt_main(args: argparse.Namespace) -> int:
    """``--lt-seed TORRENT DIR`` or ``--lt-leech TORRENT DIR [--peer HOST:PORT] [--lt-stay]``.

    A leecher without ``--peer`` has only the torrent's own sources (its web
    seeds, for ``bench_webseed.py``; its tracker, for a swarm).  With
    ``--lt-stay`` a leecher keeps seeding after its ``done`` line until SIGTERM
    (as ``pyowtorrent download --seed``), so that a swarm's last leechers can
    still get pieces from the first ones.
    """
    import libtorrent as lt

    seeding = args.lt_seed is not None
    torrent, save = args.lt_seed or args.lt_leech
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def emit(doc: dict[str, Any]) -> None:
        print(json.dumps(doc), flush=True)

    settings = lt_settings(args.port, args.lt_preset, args.lt_encryption)
    # BENCH_SWARM_LT_LOG=1 (a debugging knob of this benchmark only): libtorrent's peer and tracker
    # alerts (connects, disconnects and why, announces) go to this helper's stderr log.
    lt_log = os.environ.get("BENCH_SWARM_LT_LOG") == "1"
    if lt_log:
        cat = lt.alert.category_t
        settings["alert_mask"] |= int(cat.peer_notification | cat.tracker_notification | cat.connect_notification)
    ses = lt.session(settings)  # type: ignore[call-overload]
    deadline = time.monotonic() + 10
    while ses.listen_port() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    emit({"event": "listening", "host": "127.0.0.1", "port": ses.listen_port()})
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = save
    h = ses.add_torrent(atp)
    if not seeding and args.peer:
        host, port = args.peer.rsplit(":", 1)
        h.connect_peer((host, int(port)))
    next_status = 0.0
    done = reported = False
    while not stop.is_set():
        ses.wait_for_alert(50)
        for a in ses.pop_alerts():
            if lt_log:
                print(f"{time.monotonic():.3f} {type(a).__name__}: {a.message()}", file=sys.stderr, flush=True)
            if isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
                print(f"error: {a.message()}", file=sys.stderr, flush=True)
                return 1
            if isinstance(a, lt.torrent_finished_alert) and not seeding and not done:
                done = True
        st = h.status()
        if not done and not seeding and st.is_seeding:
            done = True
        now = time.monotonic()
        if now >= next_status or done:
            emit(
                {
                    "event": "status",
                    "state": "seeding" if st.is_seeding else str(st.state),
                    "progress": round(st.progress, 4),
                    "pieces": st.num_pieces,
                    "peers": st.num_peers,
                    "download_rate": st.download_payload_rate,
                    "upload_rate": st.upload_payload_rate,
                }
            )
            next_status = now + 1.0
        if done and not reported:
            emit({"event": "done", "bytes": st.total_wanted_done})
            if not args.lt_stay:
                return 0
            reported = True
            seeding = True  # from now on a seed: status lines once a second until SIGTERM
    return 0


# ---------------------------------------------------------------------------
# Child processes


def proc_cpu(pid: int) -> tuple[float, float, int] | None:
    """(utime, stime, minor page faults) of a live (or zombie, not yet reaped) child; times in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK, int(fields[7])
    except (OSError, IndexError, ValueError):
        return None


def proc_mem(pid: int) -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile in bytes (empty once the process has gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(rest.split()[0]) * KiB
    except OSError:
        pass
    return out


class Child:
    """A peer process whose JSON lines are read by a thread, each stamped on arrival."""

    def __init__(self, role: str, impl: str, cmd: list[str], log_dir: Path, tag: str = "") -> None:
        self.role, self.impl, self.cmd = role, impl, cmd
        self.err_path = log_dir / f"{tag}{role}-{impl}.stderr"
        self.err_file = open(self.err_path, "wb")
        self.lines: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.complete_at: float | None = None
        self.cpu_at_complete: tuple[float, float, int] | None = None
        self.cpu_at_listening: tuple[float, float, int] | None = None  # start-up: interpreter, imports, session
        self.mem_at_complete: dict[str, int] = {}
        self.peak_anon = 0
        self.peak_rss = 0
        self.rusage: Any = None
        self.status: int | None = None
        self.started = time.perf_counter()
        # cwd: "python -m pyowtorrent" imports from its working directory first; this
        # checkout's copy is the one measured, wherever the benchmark is started from.
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.err_file, stdin=subprocess.DEVNULL, env=child_env(), cwd=REPO
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            now = time.perf_counter()
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if doc.get("event") == "listening" and self.cpu_at_listening is None:
                self.cpu_at_listening = proc_cpu(self.pid)
            if doc.get("event") in ("completed", "done") and self.complete_at is None and self.role == "leecher":
                # Measured here, on arrival, before the process can go away.
                self.complete_at = now
                self.cpu_at_complete = proc_cpu(self.pid)
                self.mem_at_complete = proc_mem(self.pid)
            self.events.append((now, doc))
            self.lines.put((now, doc))

    def sample(self) -> None:
        if self.status is None:
            m = proc_mem(self.pid)
            self.peak_anon = max(self.peak_anon, m.get("RssAnon", 0))
            self.peak_rss = max(self.peak_rss, m.get("VmHWM", 0))

    def wait_for(self, pred: Any, deadline: float, what: str) -> dict[str, Any]:
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                last = next((d for _, d in reversed(self.events) if d.get("event") == "status"), None)
                where = f"; last status: {last.get('state')} at {last.get('progress', 0):.1%}" if last else ""
                raise CaseFailed(
                    f"{self.impl} {self.role}: no {what} within {deadline - self.started:.0f} s of its start{where}"
                )
            try:
                _, doc = self.lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.exited() and self.lines.empty():
                    self._reader.join(1)
                    if self.lines.empty():
                        self.reap(1)
                        code = self.proc.returncode
                        raise CaseFailed(
                            f"{self.impl} {self.role} exited ({code}) before {what}: {self.stderr_tail()}"
                        ) from None
                continue
            if pred(doc):
                return doc

    def exited(self) -> bool:
        """Whether the child has exited, without reaping it (so that ``reap`` still gets its rusage)."""
        if self.status is not None:
            return True
        return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def reap(self, timeout: float) -> bool:
        """Wait for the exit with ``wait4``, which gives this child's own rusage."""
        if self.status is not None:
            return True
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.status, self.rusage = status, ru
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                # Not ru_maxrss: it also counts the memory this process had
                # when it forked the child. VmHWM is the exec'd image's own.
                return True
            time.sleep(0.02)
        return False

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM (reading VmHWM first), SIGKILL after ``grace`` seconds, always reaped."""
        if self.status is None:
            self.sample()
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            if not self.reap(grace):
                self.proc.kill()
                self.reap(5)
        self._reader.join(2)
        self.err_file.close()

    def stderr_tail(self, n: int = 600) -> str:
        if not self.err_file.closed:
            self.err_file.flush()
        try:
            text = self.err_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        return ("…" + text[-n:]) if len(text) > n else text


class CaseFailed(Exception):
    pass


def lt_encryption_args(encryption: str) -> list[str]:
    return [] if encryption == "off" else ["--lt-encryption", encryption]


def seeder_cmd(
    impl: str, torrent: Path, seed_dir: Path, profile: Path | None, preset: str, lt_encryption: str = "off"
) -> list[str]:
    if impl == "libtorrent":
        return [
            sys.executable, SELF, "--lt-seed", str(torrent), str(seed_dir), "--lt-preset", preset,
            *lt_encryption_args(lt_encryption),
        ]  # fmt: skip
    prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
    return [
        sys.executable, *prof, "-m", "pyowtorrent", "seed", str(torrent), str(seed_dir),
        "--listen", "127.0.0.1", "--json",
    ]  # fmt: skip


def leecher_cmd(
    impl: str,
    torrent: Path,
    out: Path,
    port: int | None,
    profile: Path | None,
    preset: str,
    lt_encryption: str = "off",
    stay: bool = False,
) -> list[str]:
    """The leecher's command; ``port``: the seeder's (or the proxy's in front of it), None for no
    peer (the torrent's own sources only: web seeds, trackers); ``stay``: keep seeding once done."""
    peer = ["--peer", f"127.0.0.1:{port}"] if port is not None else []
    if impl == "libtorrent":
        return [
            sys.executable, SELF, "--lt-leech", str(torrent), str(out), *peer, "--lt-preset", preset,
            *lt_encryption_args(lt_encryption), *(["--lt-stay"] if stay else []),
        ]  # fmt: skip
    prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
    return [
        sys.executable, *prof, "-m", "pyowtorrent", "download", str(torrent),
        "-o", str(out), *peer, "--listen", "127.0.0.1", "--json", *(["--seed"] if stay else []),
    ]  # fmt: skip


# ---------------------------------------------------------------------------
# One case


@dataclass
class Result:
    case: str
    seeder: str
    leecher: str
    run: int
    ok: bool = False
    error: str = ""
    seconds: float = 0.0  # leecher spawn → verified-complete
    startup: float = 0.0  # leecher spawn → its first line (listening)
    mb_s: float = 0.0
    ratio: float | None = None  # mb_s / case a's
    leecher_cpu: float = 0.0  # seconds, spawn → complete
    seeder_cpu: float = 0.0  # seconds, during the transfer
    leecher_sys: float = 0.0  # the kernel's part of leecher_cpu
    seeder_sys: float = 0.0
    leecher_minflt: int = 0  # minor page faults, same windows as the CPU figures
    seeder_minflt: int = 0
    leecher_peak_rss: int = 0
    seeder_peak_rss: int = 0
    leecher_peak_anon: int = 0
    seeder_peak_anon: int = 0
    seeder_ready: float = 0.0  # seeder spawn → seeding (its check of the payload)
    profiles: list[str] = field(default_factory=list)


@dataclass
class ProxyResult(Result):
    """A two-peer case through the delaying proxy (``--delay-ms``): the proxy's figures too."""

    link_share: float | None = None  # mb_s / the proxy's cap in MB/s
    proxy_cpu: float = 0.0  # seconds, leecher spawn → complete
    proxy_peak_rss: int = 0
    proxy: dict[str, Any] = field(default_factory=dict)  # its stats line: connections, bytes, queue, lateness


def run_case(
    case: str, run: int, ctx: argparse.Namespace, torrent: Path, seed_dir: Path, work: Path, size: int
) -> Result:
    seed_impl, leech_impl = CASES[case]
    via = proxy_cmd(ctx) if getattr(ctx, "delay_ms", None) is not None else None
    res = (ProxyResult if via else Result)(case, seed_impl, leech_impl, run)
    out = work / f"leech-{case}{run}"
    prof_s, prof_l = profile_paths(res, ctx, work)
    enc = getattr(ctx, "lt_encryption", "off")
    return run_pair(
        res,
        ctx,
        work,
        size,
        torrent,
        out,
        seeder_cmd(seed_impl, torrent, seed_dir, prof_s, ctx.lt_preset, enc),
        lambda port: leecher_cmd(leech_impl, torrent, out, port, prof_l, ctx.lt_preset, enc),
        prof_s,
        prof_l,
        via,
    )


def proxy_cmd(ctx: argparse.Namespace) -> Callable[[int], list[str]]:
    """The delaying proxy's command, given the seeder's port (``_proxy.py``, a process of its own)."""

    def cmd(port: int) -> list[str]:
        return [
            sys.executable, str(Path(SELF).with_name("_proxy.py")), "--upstream", f"127.0.0.1:{port}",
            "--delay-ms", f"{ctx.delay_ms:g}", "--rate-mbit", f"{ctx.rate_mbit or 0:g}",
        ]  # fmt: skip

    return cmd


def profile_paths(res: Result, ctx: argparse.Namespace, work: Path) -> tuple[Path | None, Path | None]:
    """Where cProfile writes the seeder's and the leecher's profile (pyowtorrent peers only)."""
    cprof = ctx.profile == "cprofile"
    tag = f"{res.case}{res.run}"
    prof_s = work / f"{tag}-seeder.prof" if cprof and res.seeder == "pyowtorrent" else None
    prof_l = work / f"{tag}-leecher.prof" if cprof and res.leecher == "pyowtorrent" else None
    return prof_s, prof_l


def run_pair(
    res: Result,
    ctx: argparse.Namespace,
    work: Path,
    size: int,
    torrent: Path,
    out: Path,
    seed_cmd: list[str],
    leech_cmd: Callable[[int], list[str]],
    prof_s: Path | None = None,
    prof_l: Path | None = None,
    via: Callable[[int], list[str]] | None = None,
) -> Result:
    """One transfer: start ``seed_cmd``, wait until it is seeding, then time ``leech_cmd(its port)`` into ``out``.

    The seeder is anything that prints pyowtorrent's JSON lines (``listening``,
    then a ``status`` in state ``seeding``); the leecher downloads ``torrent``'s
    payload into ``out`` (emptied first), which is checked against ``torrent``
    and deleted.  Fills in ``res``, whose ``case`` and ``run`` name the files.
    With ``via``, the command of a proxy given the seeder's port, the proxy is
    started once the seeder is seeding and the leecher gets the proxy's port
    instead; a :class:`ProxyResult` then gets the proxy's CPU, memory and stats.
    """
    case, run, seed_impl, leech_impl = res.case, res.run, res.seeder, res.leecher
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()  # empty: nothing to resume from
    spies: list[tuple[subprocess.Popen[bytes], Path]] = []

    def spy(child: Child) -> None:
        """py-spy attached to a pyowtorrent peer: sampling, without stopping it (--nonblocking)."""
        if ctx.profile in ("py-spy", "py-spy-gil") and child.impl == "pyowtorrent":
            path = work / f"{case}{run}-{child.role}.pyspy.txt"
            cmd = ["py-spy", "record", "--pid", str(child.pid), "--rate", "250", "--nonblocking", "--threads"]
            cmd += ["--format", "raw", "--output", str(path)] + (["--gil"] if ctx.profile == "py-spy-gil" else [])
            spies.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), path))
    children: list[Child] = []
    sampling = threading.Event()

    def sampler() -> None:
        while not sampling.wait(SAMPLE_EVERY):
            for c in list(children):
                c.sample()

    sampler_thread = threading.Thread(target=sampler, daemon=True)
    sampler_thread.start()
    try:
        tag = f"{case}{run}-"
        seeder = Child("seeder", seed_impl, seed_cmd, work, tag)
        children.append(seeder)
        ready_deadline = time.perf_counter() + 60 + size / 50e6
        port = seeder.wait_for(lambda d: d.get("event") == "listening", ready_deadline, "listening line")["port"]
        seeder.wait_for(
            lambda d: d.get("event") == "status" and d.get("state") == "seeding", ready_deadline, "seeding state"
        )
        res.seeder_ready = time.perf_counter() - seeder.started
        spy(seeder)
        proxy = None
        if via is not None:
            proxy = Child("proxy", "tcp", via(port), work, tag)
            children.append(proxy)
            port = proxy.wait_for(lambda d: d.get("event") == "listening", ready_deadline, "listening line")["port"]
        cpu0 = proc_cpu(seeder.pid) or (0.0, 0.0, 0)
        pcpu0 = proc_cpu(proxy.pid) if proxy is not None else None
        leecher = Child("leecher", leech_impl, leech_cmd(port), work, tag)
        children.append(leecher)
        spy(leecher)
        deadline = leecher.started + ctx.timeout
        leecher.wait_for(lambda d: d.get("event") == "listening", deadline, "listening line")
        res.startup = leecher.events[0][0] - leecher.started
        leecher.wait_for(lambda d: d.get("event") in ("completed", "done"), deadline, "verified-complete event")
        assert leecher.complete_at is not None
        cpu1 = proc_cpu(seeder.pid) or (0.0, 0.0, 0)
        if proxy is not None and isinstance(res, ProxyResult):
            pcpu1 = proc_cpu(proxy.pid)
            if pcpu0 is not None and pcpu1 is not None:
                res.proxy_cpu = pcpu1[0] + pcpu1[1] - pcpu0[0] - pcpu0[1]
        res.seconds = leecher.complete_at - leecher.started
        res.mb_s = size / res.seconds / 1e6
        res.seeder_cpu = cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1]
        res.seeder_sys = cpu1[1] - cpu0[1]
        res.seeder_minflt = cpu1[2] - cpu0[2]
        # The leecher exits by itself once done (pyowtorrent: at the next status tick).
        if not leecher.reap(30 if not prof_l else 120):
            raise CaseFailed(f"{leech_impl} leecher did not exit within 30 s of completing")
        if leecher.cpu_at_complete is not None:
            user, sys_, res.leecher_minflt = leecher.cpu_at_complete
            res.leecher_cpu, res.leecher_sys = user + sys_, sys_
        elif leecher.rusage is not None:  # it had gone already: its whole life, exit included
            res.leecher_cpu = leecher.rusage.ru_utime + leecher.rusage.ru_stime
            res.leecher_sys = leecher.rusage.ru_stime
            res.leecher_minflt = leecher.rusage.ru_minflt
        if leecher.proc.returncode != 0:
            raise CaseFailed(f"{leech_impl} leecher exited {leecher.proc.returncode}: {leecher.stderr_tail()}")
        leecher.sample()
        res.leecher_peak_rss = max(leecher.peak_rss, leecher.mem_at_complete.get("VmHWM", 0))
        res.leecher_peak_anon = max(leecher.peak_anon, leecher.mem_at_complete.get("RssAnon", 0))
        seeder.stop()
        if seeder.proc.returncode not in (0, -signal.SIGTERM):
            raise CaseFailed(f"{seed_impl} seeder exited {seeder.proc.returncode}: {seeder.stderr_tail()}")
        res.seeder_peak_rss = seeder.peak_rss
        res.seeder_peak_anon = seeder.peak_anon
        if proxy is not None and isinstance(res, ProxyResult):
            proxy.stop()
            res.proxy_peak_rss = proxy.peak_rss
            res.proxy = next((d for _, d in reversed(proxy.events) if d.get("event") == "stats"), {})
            if ctx.rate_mbit:
                res.link_share = res.mb_s / (ctx.rate_mbit / 8)
        if not ctx.no_verify:
            check_download(torrent, out)
        res.ok = True
    except CaseFailed as exc:
        res.error = str(exc)
    finally:
        sampling.set()
        for c in reversed(children):
            c.stop(grace=5 if not ctx.profile else 60)
        sampler_thread.join(1)
        for sp, _ in spies:  # py-spy writes its file and exits when its target has gone
            try:
                sp.wait(30)
            except subprocess.TimeoutExpired:
                sp.send_signal(signal.SIGINT)
                try:
                    sp.wait(10)
                except subprocess.TimeoutExpired:
                    sp.kill()
                    sp.wait()
        res.profiles = [str(p) for p in (prof_s, prof_l, *(path for _, path in spies)) if p is not None and p.exists()]
        shutil.rmtree(out, ignore_errors=True)
    return res


def check_download(torrent: Path, out: Path) -> None:
    """Hash what the leecher wrote: a fast figure must never be a wrong one."""
    from pyowtorrent.storage.verifier import verify_payload
    from pyowtorrent.metainfo.torrent_file import load_metainfo

    meta = load_metainfo(torrent)
    report = verify_payload(meta, out / meta.name)
    if not report.ok:
        raise CaseFailed(f"the leecher's copy does not verify: {report}")


# ---------------------------------------------------------------------------
# Many peers: one seeder and N leechers through a tracker (--leechers N)

# Seeder implementation, leechers' ("mixed": ours and libtorrent's in turn, ours first).
SWARM_CASES = {**CASES, "m": ("libtorrent", "mixed")}


def swarm_leechers(kind: str, n: int) -> list[str]:
    if kind == "mixed":
        return ["pyowtorrent" if i % 2 == 0 else "libtorrent" for i in range(n)]
    return [kind] * n


@dataclass
class SwarmResult(Result):
    """One swarm: the inherited figures are the swarm's (``seconds``: first leecher's spawn → last
    leecher's completion; ``mb_s``: N × size over that; ``leecher_cpu``: the mean leecher's CPU
    seconds; ``leecher_peak_rss``: the largest leecher's); ``leechers`` has each one's own."""

    num_leechers: int = 0
    tracker: str = ""
    mean_mb_s: float = 0.0  # mean over leechers of size / its own spawn → complete
    seeder_sent: int | None = None  # payload + protocol bytes the seeder's sockets sent (None: no ss)
    unattributed: int = 0  # bytes on peer connections whose other end no ss sample saw (short-lived)
    leecher_figures: list[dict[str, Any]] = field(default_factory=list)


class SocketBytes:
    """Bytes each of our processes sent on each of its TCP connections, as the kernel counts them (``ss``).

    Implementation-neutral: every TCP connection on 127.0.0.1, whoever made it.
    Two sources: ``sample()`` (``ss -tinp``, every 0.2 s and once at the end)
    says which process owns which local port, and the counts of the
    connections still open; a listener (``ss -tinE``, line-buffered through
    ``stdbuf``) gets each connection's final counts as it is destroyed, since
    peers drop connections mid-swarm (libtorrent closes a connection between
    two seeds as soon as it completes).  Who is at the other end of a
    connection is the process owning the socket whose local port is this
    one's remote port; each peer's listen port is given (``own``), so the
    accepting end of a connection is always known, and the dialling end if a
    sample saw it.  A connection opened and closed between two samples (on a
    payload of a few MiB) leaves its bytes *unattributed*: ``flows`` counts
    those apart, so that an incomplete figure says so.  Bytes are TCP
    payload: BitTorrent messages, 13 bytes of header per 16 KiB block, ~0.1%
    over the pieces.  ``available`` is False without ``ss`` (iproute2) and
    ``stdbuf`` (coreutils).
    """

    # libtorrent binds its sockets to the interface: "127.0.0.1%lo:6881".
    LINE = re.compile(r"127\.0\.0\.1(?:%\w+)?:(\d+)\s+127\.0\.0\.1(?:%\w+)?:(\d+)(?:\s+users:\(\(\"[^\"]*\",pid=(\d+),)?")
    SENT = re.compile(r"\bbytes_sent:(\d+)")

    def __init__(self) -> None:
        self.ss, self.stdbuf = shutil.which("ss"), shutil.which("stdbuf")
        self.available = self.ss is not None and self.stdbuf is not None
        self.owner: dict[int, int] = {}  # local port -> pid (ours only)
        self.sent: dict[tuple[int, int], int] = {}  # (local port, remote port) -> bytes sent, largest seen
        self.lock = threading.Lock()
        self.events: subprocess.Popen[str] | None = None
        self.reader: threading.Thread | None = None

    def start(self) -> None:
        if not self.available:
            return
        assert self.ss is not None and self.stdbuf is not None
        self.events = subprocess.Popen(
            [self.stdbuf, "-oL", self.ss, "-tinHE"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.reader = threading.Thread(target=self._read_events, daemon=True)
        self.reader.start()

    def stop(self) -> None:
        if self.events is not None:
            time.sleep(0.2)  # the last connections' destroy events
            self.events.terminate()
            self.events.wait(5)
            if self.reader is not None:
                self.reader.join(2)
            if self.events.stdout is not None:
                self.events.stdout.close()
            self.events = None

    def _parse(self, lines: Any, pids: set[int] | None) -> None:
        key = None
        for line in lines:
            m = self.LINE.search(line)
            if m and not line[:1].isspace():
                key = (int(m.group(1)), int(m.group(2)))
                if pids is not None:  # a sample: who owns the port
                    pid = int(m.group(3) or 0)
                    with self.lock:
                        if pid in pids:
                            self.owner[key[0]] = pid
                        else:
                            key = None
                continue
            if key is not None and line[:1].isspace():
                m2 = self.SENT.search(line)
                if m2:
                    with self.lock:
                        self.sent[key] = max(self.sent.get(key, 0), int(m2.group(1)))
                key = None

    def _read_events(self) -> None:
        assert self.events is not None and self.events.stdout is not None
        self._parse(self.events.stdout, None)

    def sample(self, pids: set[int]) -> None:
        if not self.available:
            return
        assert self.ss is not None
        try:
            text = subprocess.run(
                [self.ss, "-tinpH", "state", "established", "src", "127.0.0.1"],
                capture_output=True, text=True, timeout=5, check=False,
            ).stdout  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return
        self._parse(text.splitlines(), pids)

    def own(self, port: int, pid: int) -> None:
        """``pid`` listens on ``port``: every connection accepted there is its."""
        with self.lock:
            self.owner[port] = pid

    def flows(self, ignore: frozenset[int] = frozenset()) -> tuple[dict[tuple[int, int], tuple[int, int]], int]:
        """(from pid, to pid) -> (bytes the sender's sockets sent, connections) between our processes, and
        the bytes sent on connections with one end ours and the other unknown (``ignore``: ports that are
        not peers', the tracker's)."""
        with self.lock:
            out: dict[tuple[int, int], tuple[int, int]] = {}
            unattributed = 0
            for (lport, rport), sent in self.sent.items():
                if lport in ignore or rport in ignore:
                    continue
                pid, other = self.owner.get(lport), self.owner.get(rport)
                if pid is None and other is None:
                    continue  # not ours: ss -E reports every socket of the machine
                if pid is None or other is None:
                    unattributed += sent
                    continue
                if other == pid:
                    continue
                total, conns = out.get((pid, other), (0, 0))
                out[(pid, other)] = (total + sent, conns + 1)
            return out, unattributed


def scrape_text(tracker: LocalTracker) -> str:
    try:
        entry = tracker.scrape()
    except (OSError, ValueError) as exc:
        return f"failed: {exc}"
    return ", ".join(f"{k.decode(errors='replace')} {v}" for k, v in entry.items()) or "no entry"


def torrent_with_tracker(base: Path, dest: Path, announce: str) -> None:
    """``base`` with ``announce`` = ``announce``: the same info dict, so the same info-hash and pieces."""
    from pyowtorrent.metainfo.bencoding import Bencached, encode
    from pyowtorrent.metainfo.torrent_file import load_metainfo

    meta = load_metainfo(base)
    top = {**meta.raw_top, b"announce": announce.encode(), b"info": Bencached(meta.info_bytes)}
    dest.write_bytes(encode(top))


def debug_log_args(work: Path, name: str) -> list[str]:
    """BENCH_SWARM_PYOW_LOG=debug|info (a debugging knob of this benchmark only): our peers log at that
    level to ``<work>/<name>.log`` (use with --keep).  Logging costs CPU: the figures then mean little."""
    level = os.environ.get("BENCH_SWARM_PYOW_LOG", "")
    if level not in ("debug", "info"):
        return []
    return ["--log-level", level, "--log-file", str(work / f"{name}.log")]


def with_debug_log(cmd: list[str], impl: str, work: Path, name: str) -> list[str]:
    if impl != "pyowtorrent":
        return cmd
    extra = debug_log_args(work, name)
    if not extra:
        return cmd
    verb = next(i for i, a in enumerate(cmd) if a in ("seed", "download"))
    return [*cmd[: verb + 1], *extra, *cmd[verb + 1 :]]


def run_swarm(
    case: str, run: int, ctx: argparse.Namespace, plain_torrent: Path, seed_dir: Path, work: Path, size: int
) -> SwarmResult:
    """One seeder, then ``ctx.leechers`` leechers spawned together; all find one another through a fresh
    tracker on loopback (the leechers get no ``--peer``).  Leechers stay, seeding, until the last one
    completes; then all stop and every download is checked."""
    from pyowtorrent.metainfo.torrent_file import load_metainfo

    n = ctx.leechers
    seed_impl, kind = SWARM_CASES[case]
    impls = swarm_leechers(kind, n)
    res = SwarmResult(case, seed_impl, kind, run, num_leechers=n)
    tag = f"{case}{run}-"
    outs = [work / f"leech-{case}{run}-{i}" for i in range(n)]
    enc = ctx.lt_encryption
    children: list[Child] = []
    tracker: LocalTracker | None = None
    counter = SocketBytes()
    sampling = threading.Event()

    def sampler() -> None:
        # Memory and socket owners at 10 Hz (an ss call costs a few ms of CPU).
        while not sampling.wait(SAMPLE_EVERY):
            for c in list(children):
                c.sample()
            counter.sample({c.pid for c in children})

    counter.start()
    sampler_thread = threading.Thread(target=sampler, daemon=True)
    sampler_thread.start()
    try:
        try:
            tracker = LocalTracker(work / f"{tag}tracker", load_metainfo(plain_torrent).info_hash, plain_torrent)
        except (OSError, RuntimeError) as exc:
            raise CaseFailed(f"no tracker: {exc}") from exc
        res.tracker = tracker.kind
        torrent = work / f"{tag}swarm.torrent"
        torrent_with_tracker(plain_torrent, torrent, tracker.url)
        seed = with_debug_log(seeder_cmd(seed_impl, torrent, seed_dir, None, ctx.lt_preset, enc), seed_impl, work,
                              f"{tag}seeder")  # fmt: skip
        seeder = Child("seeder", seed_impl, seed, work, tag)
        children.append(seeder)
        ready_deadline = time.perf_counter() + 60 + size / 50e6
        seeder.wait_for(lambda d: d.get("event") == "listening", ready_deadline, "listening line")
        seeder.wait_for(
            lambda d: d.get("event") == "status" and d.get("state") == "seeding", ready_deadline, "seeding state"
        )
        res.seeder_ready = time.perf_counter() - seeder.started
        # The leechers must find the seeder in the tracker's first answer.
        announce_deadline = time.monotonic() + 30
        while True:
            try:
                if tracker.seeders() >= 1:
                    break
            except (OSError, ValueError):
                pass  # asked again until the deadline
            if time.monotonic() > announce_deadline:
                raise CaseFailed(f"{seed_impl} seeder never announced to the {tracker.kind}")
            if seeder.exited():
                raise CaseFailed(f"{seed_impl} seeder exited before announcing: {seeder.stderr_tail()}")
            time.sleep(0.05)
        cpu0 = proc_cpu(seeder.pid) or (0.0, 0.0, 0)
        leechers: list[Child] = []
        for i, impl in enumerate(impls):
            shutil.rmtree(outs[i], ignore_errors=True)
            outs[i].mkdir()
        for i, impl in enumerate(impls):
            cmd = leecher_cmd(impl, torrent, outs[i], None, None, ctx.lt_preset, enc, stay=True)
            child = Child("leecher", impl, with_debug_log(cmd, impl, work, f"{tag}{i}-leecher"), work, f"{tag}{i}-")
            children.append(child)
            leechers.append(child)
        t0 = min(c.started for c in leechers)
        deadline = t0 + ctx.timeout
        while not all(c.complete_at is not None for c in leechers):
            for i, c in enumerate(leechers):
                if c.complete_at is None and c.exited():
                    c._reader.join(1)
                    if c.complete_at is None:
                        c.reap(1)
                        raise CaseFailed(
                            f"{c.impl} leecher #{i} exited ({c.proc.returncode}) before completing: {c.stderr_tail()}"
                        )
            if seeder.exited():
                seeder.reap(1)
                raise CaseFailed(f"{seed_impl} seeder exited ({seeder.proc.returncode}): {seeder.stderr_tail()}")
            if time.perf_counter() > deadline:
                late = []
                for i, c in enumerate(leechers):
                    if c.complete_at is None:
                        last = next((d for _, d in reversed(c.events) if d.get("event") == "status"), {})
                        late.append(f"#{i} {c.impl} at {last.get('progress', 0):.1%} with {last.get('peers')} peers")
                st = next((d for _, d in reversed(seeder.events) if d.get("event") == "status"), {})
                raise CaseFailed(
                    f"not all leechers complete within {ctx.timeout:.0f} s: {', '.join(late)}; the seeder had "
                    f"{st.get('peers')} peers (tracker's scrape: {scrape_text(tracker)})"
                )
            time.sleep(0.02)
        cpu1 = proc_cpu(seeder.pid) or (0.0, 0.0, 0)
        counter.sample({c.pid for c in children})
        end = max(c.complete_at or 0.0 for c in leechers)
        res.seconds = end - t0
        res.mb_s = n * size / res.seconds / 1e6
        res.seeder_cpu = cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1]
        res.seeder_sys = cpu1[1] - cpu0[1]
        res.seeder_minflt = cpu1[2] - cpu0[2]
        for c in leechers:
            c.stop(grace=10)
        seeder.stop(grace=10)
        counter.stop()
        for c in children:
            listening = next((d for _, d in c.events if d.get("event") == "listening"), None)
            if listening is not None:
                counter.own(int(listening["port"]), c.pid)
        tracker_port = urllib.parse.urlsplit(tracker.url).port or 0
        flows, res.unattributed = counter.flows(frozenset({tracker_port})) if counter.available else ({}, 0)
        leecher_pids = {c.pid for c in leechers}
        if counter.available:
            res.seeder_sent = sum(v for (a, b), (v, _) in flows.items() if a == seeder.pid and b in leecher_pids)
        figures = []
        for i, c in enumerate(leechers):
            assert c.complete_at is not None
            user, sys_, minflt = c.cpu_at_complete or (0.0, 0.0, 0)
            fig: dict[str, Any] = {
                "impl": c.impl,
                "seconds": c.complete_at - c.started,
                "startup": (c.events[0][0] - c.started) if c.events else 0.0,
                "mb_s": size / (c.complete_at - c.started) / 1e6,
                "cpu": user + sys_,
                "sys": sys_,
                "startup_cpu": sum((c.cpu_at_listening or (0.0, 0.0, 0))[:2]),
                "minflt": minflt,
                "peak_rss": max(c.peak_rss, c.mem_at_complete.get("VmHWM", 0)),
                "peak_anon": max(c.peak_anon, c.mem_at_complete.get("RssAnon", 0)),
                "exit": c.proc.returncode,
            }
            if counter.available:
                # What it received, by sender; bytes on the wire (messages included), to the end of the swarm.
                fig["from_seeder"] = flows.get((seeder.pid, c.pid), (0, 0))[0]
                fig["from_leechers"] = sum(v for (a, b), (v, _) in flows.items() if b == c.pid and a in leecher_pids)
                fig["to_leechers"] = sum(v for (a, b), (v, _) in flows.items() if a == c.pid and b in leecher_pids)
                fig["connections"] = sum(k for (a, b), (_, k) in flows.items() if a == c.pid)
            figures.append(fig)
        res.leecher_figures = figures
        res.mean_mb_s = sum(f["mb_s"] for f in figures) / n
        res.leecher_cpu = sum(f["cpu"] for f in figures) / n
        res.leecher_sys = sum(f["sys"] for f in figures) / n
        res.leecher_minflt = sum(f["minflt"] for f in figures) // n
        res.leecher_peak_rss = max(f["peak_rss"] for f in figures)
        res.leecher_peak_anon = max(f["peak_anon"] for f in figures)
        res.startup = max(f["startup"] for f in figures)
        res.seeder_peak_rss = seeder.peak_rss
        res.seeder_peak_anon = seeder.peak_anon
        for i, c in enumerate(leechers):
            if c.proc.returncode not in (0, -signal.SIGTERM):
                raise CaseFailed(f"{c.impl} leecher #{i} exited {c.proc.returncode}: {c.stderr_tail()}")
        if seeder.proc.returncode not in (0, -signal.SIGTERM):
            raise CaseFailed(f"{seed_impl} seeder exited {seeder.proc.returncode}: {seeder.stderr_tail()}")
        if not ctx.no_verify:
            for i, out in enumerate(outs):
                try:
                    check_download(torrent, out)
                except CaseFailed as exc:
                    raise CaseFailed(f"leecher #{i} ({impls[i]}): {exc}") from None
        res.ok = True
    except CaseFailed as exc:
        res.error = str(exc)
    finally:
        sampling.set()
        for c in reversed(children):
            c.stop(grace=5)
        sampler_thread.join(2)
        counter.stop()
        if tracker is not None:
            tracker.stop()
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)
    return res


def swarm_table(rows: Sequence[SwarmResult], size: int) -> str:
    gib = size / GiB
    nw = max([30] + [len(f"{r.seeder} → {r.num_leechers} × {r.leecher}") for r in rows])
    head = (
        f"{'case':<4} {'seeder → leechers':<{nw}} {'wall s':>7} {'agg MB/s':>8} {'mean MB/s':>9} {'× (a)':>6} "
        f"{'leech CPU':>9} {'seed CPU':>9} {'peak RSS MiB':>15} {'seeder sent':>11}"
    )
    sub = (
        f"{'':<4} {'':<{nw}} {'':>7} {'':>8} {'':>9} {'':>6} {'s/GiB':>9} {'s/GiB out':>9} "
        f"{'leech':>7} {'seed':>7} {'copies':>11}"
    )
    lines = [head, sub, "-" * len(head)]
    for r in rows:
        name = f"{r.seeder} → {r.num_leechers} × {r.leecher}"
        if not r.ok:
            lines.append(f"{r.case:<4} {name:<{nw}} FAILED: {r.error}")
            continue
        ratio = f"{r.ratio:5.2f}×" if r.ratio is not None else "     -"
        sent = r.seeder_sent
        copies = f"{sent / size:11.2f}" if sent is not None else f"{'-':>11}"
        # The seeder's CPU per GiB it sent (all the payload copies it uploaded), when ss could count them.
        seed_per = f"{r.seeder_cpu / (sent / GiB):9.2f}" if sent else f"{r.seeder_cpu / (r.num_leechers * gib):9.2f}"
        lines.append(
            f"{r.case:<4} {name:<{nw}} {r.seconds:7.2f} {r.mb_s:8.1f} {r.mean_mb_s:9.1f} {ratio:>6} "
            f"{r.leecher_cpu / gib:9.2f} {seed_per} {r.leecher_peak_rss / MiB:7.1f} {r.seeder_peak_rss / MiB:7.1f} "
            f"{copies}"
        )
        for i, f in enumerate(r.leecher_figures):
            detail = (
                f"     #{i} {f['impl']:<11} {f['seconds']:6.2f} s {f['mb_s']:7.1f} MB/s  CPU {f['cpu'] / gib:5.2f} s/GiB"
                f" ({f['startup_cpu']:.2f} s to start)  RSS {f['peak_rss'] / MiB:6.1f} MiB"
            )
            if "from_seeder" in f:
                got = f["from_seeder"] + f["from_leechers"]
                detail += (
                    f"  in {f['from_seeder'] / MiB:5.1f} seeder + {f['from_leechers'] / MiB:5.1f} leechers = "
                    f"{got / MiB:5.1f} MiB ({got / size - 1:+5.1%});  out {f['to_leechers'] / MiB:5.1f} MiB to "
                    f"leechers;  {f['connections']} conn."
                )
            lines.append(detail)
        if r.seeder_sent is not None and r.unattributed > 0.01 * r.num_leechers * size:
            lines.append(
                f"     ({r.unattributed / MiB:.1f} MiB went over connections too short-lived to tell whose they "
                "were: the byte figures above are short by that much)"
            )
    return "\n".join(lines)


def swarm_targets(best: dict[str, Result]) -> list[tuple[str, bool | None, str]]:
    label = f"pyowtorrent leechers' aggregate ≥ {TARGET_SWARM_RATIO:.0%} of (a)"
    r = best.get("b")
    if r is None or not r.ok or r.ratio is None:
        return [(label, None, "not measured")]
    return [(label, r.ratio >= TARGET_SWARM_RATIO, f"{r.ratio:.2f}× (case b)")]


def proxy_targets(best: dict[str, Result]) -> list[tuple[str, bool | None, str]]:
    label = f"pyowtorrent leecher ≥ {TARGET_PROXY_RATIO:.0%} of (a), same proxy"
    r = best.get("b")
    if r is None or not r.ok or r.ratio is None:
        return [(label, None, "not measured")]
    # Three decimals: two peers that both fill the link differ by noise around 1.00.
    return [(label, r.ratio >= TARGET_PROXY_RATIO, f"{r.ratio:.3f}× (case b)")]


def proxy_lines(rows: Sequence[Result], size: int) -> list[str]:
    out = []
    for r in rows:
        if not isinstance(r, ProxyResult) or not r.ok:
            continue
        st = r.proxy
        share = f"{r.link_share:.0%} of the cap, " if r.link_share is not None else ""
        out.append(
            f"  {r.case}: {share}proxy CPU {r.proxy_cpu:.2f} s ({r.proxy_cpu / (size / GiB):.2f} s/GiB), "
            f"peak RSS {r.proxy_peak_rss / MiB:.1f} MiB, {st.get('connections', '?')} connection(s), "
            f"largest queue {st.get('max_queued', 0) / MiB:.2f} MiB, chunks released "
            f"{st.get('mean_late_ms', 0):.2f} ms late on average ({st.get('max_late_ms', 0):.1f} ms at worst)"
        )
    return out


# ---------------------------------------------------------------------------
# Output


def table(rows: Sequence[Result], size: int) -> str:
    gib = size / GiB
    # As wide as the widest "seeder → leecher", at least 27 (this script's rows fit in that).
    nw = max([27] + [len(f"{r.seeder} → {r.leecher}") for r in rows])
    cw = max(4, *(len(r.case) for r in rows)) if rows else 4
    head = (
        f"{'case':<{cw}} {'seeder → leecher':<{nw}} {'wall s':>7} {'start':>6} {'MB/s':>7} {'× (a)':>6} "
        f"{'CPU s/GiB':>17} {'peak RSS MiB':>15} {'peak anon MiB':>15}"
    )
    sub = f"{'':<{cw}} {'':<{nw}} {'':>7} {'':>6} {'':>7} {'':>6} " + " ".join(
        f"{'leech':>{w}} {'seed':>{w}}" for w in (8, 7, 7)
    )
    lines = [head, sub, "-" * len(head)]
    for r in rows:
        name = f"{r.seeder} → {r.leecher}"
        if not r.ok:
            lines.append(f"{r.case:<{cw}} {name:<{nw}} FAILED: {r.error}")
            continue
        ratio = f"{r.ratio:5.2f}×" if r.ratio is not None else "     -"
        lines.append(
            f"{r.case:<{cw}} {name:<{nw}} {r.seconds:7.2f} {r.startup:6.2f} {r.mb_s:7.1f} {ratio:>6} "
            f"{r.leecher_cpu / gib:8.2f} {r.seeder_cpu / gib:8.2f} "
            f"{r.leecher_peak_rss / MiB:7.1f} {r.seeder_peak_rss / MiB:7.1f} "
            f"{r.leecher_peak_anon / MiB:7.1f} {r.seeder_peak_anon / MiB:7.1f}"
        )
    return "\n".join(lines)


def targets(best: dict[str, Result]) -> list[tuple[str, bool | None, str]]:
    out: list[tuple[str, bool | None, str]] = []

    def ratio_line(label: str, case: str) -> None:
        r = best.get(case)
        if r is None or not r.ok or r.ratio is None:
            out.append((label, None, "not measured"))
        else:
            out.append((label, r.ratio >= TARGET_RATE_RATIO, f"{r.ratio:.2f}× (case {case})"))

    ratio_line(f"pyowtorrent leecher ≥ {TARGET_RATE_RATIO:.0%} of (a)", "b")
    ratio_line(f"pyowtorrent seeder  ≥ {TARGET_RATE_RATIO:.0%} of (a)", "c")
    rss = [(c, best[c].leecher_peak_rss) for c in ("b", "d") if c in best and best[c].ok]
    if rss:
        worst = max(v for _, v in rss)
        detail = ", ".join(f"{v / MiB:.1f} MiB (case {c})" for c, v in rss)
        label = f"pyowtorrent leecher peak RSS < {TARGET_LEECHER_RSS_MIB} MiB"
        out.append((label, worst < TARGET_LEECHER_RSS_MIB * MiB, detail))
    else:
        out.append((f"pyowtorrent leecher peak RSS < {TARGET_LEECHER_RSS_MIB} MiB", None, "not measured"))
    return out


def profile_summary(path: Path, top: int = 12) -> str:
    """The top functions of a profile: by own and by cumulative time (cProfile) or samples (py-spy)."""
    if path.suffix == ".prof":
        import io
        import pstats

        out = io.StringIO()
        stats = pstats.Stats(str(path), stream=out).strip_dirs()
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        return "\n".join(line for line in out.getvalue().splitlines() if line.strip())
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        # "func (path/file.py:123)" -> "func (file.py)"; the first frame names the thread.
        frames = [re.sub(r"\((?:.*/)?([^/]*?)(?::\d+)?\)$", r"(\1)", f) for f in stack.split(";")[1:]]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    lines = [f"{total} samples, all threads (idle waits mostly excluded by py-spy)", "  own:"]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    lines.append("  inclusive (below the event loop):")
    skip = ("<module>", "_run_code", "_run_module_as_main", "main (cli.py)", "run_command", "run (", "Runner.run",
            "BaseEventLoop.run", "run_download", "run_seed", "_run (engine.py)", "Thread._bootstrap", "Thread.run")
    ranked = [(f, n) for f, n in sorted(incl.items(), key=lambda kv: -kv[1]) if not f.startswith(skip)]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in ranked[:top]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=parse_size, default=GiB, help="payload size, e.g. 1GiB, 256MiB (default 1GiB)")
    p.add_argument("--piece-length", type=parse_size, default=256 * KiB, help="default 256KiB")
    p.add_argument("--files", type=int, default=4, help="files in the payload; 1 = a single-file torrent (default 4)")
    p.add_argument("--dir", type=Path, default=None, help="where the payload and downloads go (default: $TMPDIR)")
    p.add_argument(
        "--only", default=None, help="cases, e.g. 'ad' or 'a,b' (default: abcd, and m with --leechers; ratios need a)"
    )
    p.add_argument(
        "--leechers",
        type=int,
        default=1,
        metavar="N",
        help="1 (default): one seeder → one leecher, given the seeder's address; N > 1: one seeder and N leechers "
        "started together, finding one another through a tracker on loopback (opentracker, else pyowtorrent's)",
    )
    p.add_argument(
        "--delay-ms",
        type=float,
        default=None,
        metavar="D",
        help="put a proxy (benchmarks/_proxy.py, its own process) between leecher and seeder that delays each "
        "direction by D ms (round trip 2D); one leecher only",
    )
    p.add_argument(
        "--rate-mbit",
        type=float,
        default=None,
        metavar="R",
        help="the proxy's cap per direction per connection, in Mbit/s (implies the proxy; default: no cap)",
    )
    p.add_argument(
        "--lt-encryption",
        choices=("off", "default"),
        default="off",
        help="libtorrent's MSE/PE: off (default: dials plaintext, accepts both), or libtorrent's own "
        "defaults, as qBittorrent and Deluge ship (dials encrypted first)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of each case, interleaved; the fastest is kept")
    p.add_argument("--timeout", type=float, help="seconds per transfer before the case fails (default: 60 + 1 per 2 MB)")
    p.add_argument(
        "--lt-preset",
        choices=("default", "high-performance"),
        default="default",
        help="libtorrent settings: its defaults, or the per-connection part of high_performance_seed()",
    )
    p.add_argument(
        "--profile",
        nargs="?",
        const="cprofile",
        choices=("cprofile", "py-spy", "py-spy-gil"),
        help="profile the pyowtorrent peers: under cProfile (slows them a lot), or py-spy attached "
        "(sampling, raw collapsed stacks; needs py-spy on PATH; py-spy-gil: only the thread holding "
        "the GIL); keeps the files",
    )
    p.add_argument("--no-verify", action="store_true", help="skip hashing each download after the case")
    p.add_argument("--keep", action="store_true", help="leave the payload, .torrent, logs and profiles behind")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    # Helper modes (one libtorrent session in this process):
    p.add_argument("--lt-seed", nargs=2, metavar=("TORRENT", "DIR"), help=argparse.SUPPRESS)
    p.add_argument("--lt-leech", nargs=2, metavar=("TORRENT", "DIR"), help=argparse.SUPPRESS)
    p.add_argument("--peer", help=argparse.SUPPRESS)
    p.add_argument("--lt-stay", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.lt_seed or args.lt_leech:
        return lt_main(args)
    if args.leechers < 1:
        raise SystemExit("--leechers must be at least 1")
    if args.rate_mbit is not None and args.delay_ms is None:
        args.delay_ms = 0.0  # a rate cap alone: the proxy without delay
    if (args.delay_ms is not None and args.delay_ms < 0) or (args.rate_mbit is not None and args.rate_mbit <= 0):
        raise SystemExit("--delay-ms must be at least 0 and --rate-mbit more than 0")
    if args.leechers > 1 and args.delay_ms is not None:
        raise SystemExit("the proxy (--delay-ms, --rate-mbit) is for one leecher: drop --leechers or the proxy")
    if args.leechers > 1 and args.profile:
        raise SystemExit("--profile is for one leecher (two peers)")
    known = SWARM_CASES if args.leechers > 1 else CASES
    only = args.only if args.only is not None else "".join(known)
    cases = [c for c in only.lower() if c in known]
    if not cases or any(c not in known and c not in ", " for c in only.lower()):
        raise SystemExit(f"--only takes letters among {''.join(known)}")
    cases = sorted(set(cases))
    if args.files < 1 or args.repeat < 1:
        raise SystemExit("--files and --repeat must be at least 1")
    if args.timeout is None:
        moved = args.size * args.leechers
        args.timeout = 60 + moved / 2e6
        if args.rate_mbit:
            args.timeout += 2 * moved / (args.rate_mbit * 1e6 / 8)
    return in_work_dir(args, "pyowtorrent-swarm-", "peers", lambda root: run(args, root, cases))


def repeat_cases(
    args: argparse.Namespace, cases: list[str], one: Callable[[str, int], Result]
) -> tuple[list[Result], dict[str, Result]]:
    """Run every case ``--repeat`` times, interleaved; the best run of each, with throughput ratios to case a."""
    results: list[Result] = []
    for run_no in range(args.repeat):
        for case in cases:
            r = one(case, run_no)
            if r.ok:
                log(f"  {r.seconds:.2f} s, {r.mb_s:.1f} MB/s (source ready after {r.seeder_ready:.1f} s)")
            else:
                log(f"  FAILED: {r.error}")
            results.append(r)
            os.sync()  # the leecher's dirty pages, before the next case
    best: dict[str, Result] = {}
    for r in results:
        cur = best.get(r.case)
        if cur is None or (r.ok and (not cur.ok or r.seconds < cur.seconds)):
            best[r.case] = r
    base = best.get("a")
    for r in results:
        if base is not None and base.ok and r.ok:
            r.ratio = r.mb_s / base.mb_s
    return results, best


def run(args: argparse.Namespace, root: Path, cases: list[str]) -> int:
    size = args.size
    seed_dir, meta = seed_payload(args, root, "swarm")
    torrent = root / "swarm.torrent"

    swarm = args.leechers > 1
    proxied = args.delay_ms is not None

    def one(case: str, run_no: int) -> Result:
        if swarm:
            seed_impl, kind = SWARM_CASES[case]
            log(f"case {case} run {run_no + 1}/{args.repeat}: {seed_impl} seeder → {args.leechers} × {kind} leechers")
            return run_swarm(case, run_no, args, torrent, seed_dir, root, size)
        seed_impl, leech_impl = CASES[case]
        via = " through the proxy" if proxied else ""
        log(f"case {case} run {run_no + 1}/{args.repeat}: {seed_impl} seeder → {leech_impl} leecher{via}")
        return run_case(case, run_no, args, torrent, seed_dir, root, size)

    results, best = repeat_cases(args, cases, one)
    rows = [best[c] for c in cases]
    checks = swarm_targets(best) if swarm else proxy_targets(best) if proxied else targets(best)
    setup = {
        "payload": f"{human(size)} in {args.files} file{'s' * (args.files > 1)}",
        "size": size,
        "piece_length": args.piece_length,
        "num_pieces": meta.num_pieces,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "libtorrent": __import__("libtorrent").__version__,
        "lt_preset": args.lt_preset,
        "lt_encryption": args.lt_encryption,
        "repeat": args.repeat,
        "profiled": args.profile,
        "loadavg_1min": os.getloadavg()[0],
    }
    if swarm:
        setup["leechers"] = args.leechers
        setup["tracker"] = next((r.tracker for r in results if isinstance(r, SwarmResult) and r.tracker), "")
    if proxied:
        setup["proxy"] = {"delay_ms": args.delay_ms, "rtt_ms": 2 * args.delay_ms, "rate_mbit": args.rate_mbit}
    if args.json:
        doc = {
            "setup": setup,
            "best": [asdict(r) for r in rows],
            "runs": [asdict(r) for r in results],
            "targets": [{"target": t, "met": ok, "value": v} for t, ok, v in checks],
        }
        print(json.dumps(doc, indent=2))
    else:
        enc = "libtorrent's default encryption" if args.lt_encryption == "default" else "libtorrent dials plaintext"
        print(
            f"payload {setup['payload']}, piece length {human(args.piece_length)} ({meta.num_pieces} pieces), "
            f"loopback TCP, {os.cpu_count()} CPUs, Python {setup['python']}, "
            f"libtorrent {setup['libtorrent']} ({args.lt_preset} settings, {enc})"
            + (f", PROFILED ({args.profile}): times are not comparable" if args.profile else "")
        )
        if proxied:
            cap = f"{args.rate_mbit:g} Mbit/s ({args.rate_mbit / 8:.2f} MB/s)" if args.rate_mbit else "no"
            print(
                f"through the delaying proxy: {args.delay_ms:g} ms each way (RTT {2 * args.delay_ms:g} ms), "
                f"{cap} cap per direction per connection"
            )
        if swarm:
            print(
                f"{args.leechers} leechers spawned together, peers from the {setup['tracker']} only; wall = first "
                "leecher's spawn → last one's verified complete; agg = leechers × size / wall; mean = the mean of "
                "size / each leecher's own wall; MB = 10^6 bytes; × (a) = agg / libtorrent→libtorrent's; "
                f"{'best of ' + str(args.repeat) if args.repeat > 1 else 'one run each'}"
            )
            print(swarm_table([r for r in rows if isinstance(r, SwarmResult)], size))
        else:
            print(
                "wall = leecher spawn → verified complete (start: spawn → listening, included); MB = 10^6 bytes; "
                "× (a) = MB/s / libtorrent→libtorrent's"
                + (" through the same proxy" if proxied else "")
                + f"; {'best of ' + str(args.repeat) if args.repeat > 1 else 'one run each'}"
            )
            print(table(rows, size))
            if proxied:
                print("\n".join(proxy_lines(rows, size)))
        if args.repeat > 1:
            for c in cases:
                runs = " ".join(f"{r.seconds:.2f}" if r.ok else "fail" for r in results if r.case == c)
                print(f"  runs of {c} (s): {runs}")
        print("targets:")
        for label, ok, value in checks:
            mark = "met" if ok else ("NOT met" if ok is False else "-")
            print(f"  {label:<44} {value:<40} {mark}")
        print(f"1-minute load average at the end: {setup['loadavg_1min']:.2f} on {os.cpu_count()} CPUs")
        if args.profile:
            for r in rows:
                for p in r.profiles:
                    print(f"\nprofile: {p}")
                    print(profile_summary(Path(p)))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
