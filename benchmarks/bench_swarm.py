"""Two-peer swarm on loopback: pyowtorrent against libtorrent, leecher and seeder.

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

Run ``python benchmarks/bench_swarm.py --help`` for the options; see
``benchmarks/README.md`` for how to read the table.  Needs the ``libtorrent``
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import (  # noqa: E402  (benchmarks/, beside this script)
    GiB,
    KiB,
    MiB,
    REPO,
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


def lt_settings(port: int, preset: str = "default") -> dict[str, Any]:
    import libtorrent as lt

    base: dict[str, Any] = {}
    if preset == "high-performance":
        # libtorrent's own preset for a fast seed: deeper send buffers, longer request queues.
        base = {k: v for k, v in lt.high_performance_seed().items() if k in HIGH_PERFORMANCE_KEYS}
    return base | {
        "listen_interfaces": f"127.0.0.1:{port}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # pyowtorrent speaks plain BitTorrent over TCP: so does the baseline.
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "out_enc_policy": int(lt.enc_policy.disabled),
        "in_enc_policy": int(lt.enc_policy.enabled),
        "alert_mask": int(lt.alert.category_t.status_notification | lt.alert.category_t.error_notification),
    }


def lt_main(args: argparse.Namespace) -> int:
    """``--lt-seed TORRENT DIR`` or ``--lt-leech TORRENT DIR [--peer HOST:PORT]``.

    A leecher without ``--peer`` has only the torrent's own sources (its web
    seeds, for ``bench_webseed.py``).
    """
    import libtorrent as lt

    seeding = args.lt_seed is not None
    torrent, save = args.lt_seed or args.lt_leech
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def emit(doc: dict[str, Any]) -> None:
        print(json.dumps(doc), flush=True)

    ses = lt.session(lt_settings(args.port, args.lt_preset))  # type: ignore[call-overload]
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
    done = False
    while not stop.is_set():
        ses.wait_for_alert(50)
        for a in ses.pop_alerts():
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
        if done:
            emit({"event": "done", "bytes": st.total_wanted_done})
            return 0
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


def seeder_cmd(impl: str, torrent: Path, seed_dir: Path, profile: Path | None, preset: str) -> list[str]:
    if impl == "libtorrent":
        return [sys.executable, SELF, "--lt-seed", str(torrent), str(seed_dir), "--lt-preset", preset]
    prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
    return [
        sys.executable, *prof, "-m", "pyowtorrent", "seed", str(torrent), str(seed_dir),
        "--listen", "127.0.0.1", "--json",
    ]  # fmt: skip


def leecher_cmd(impl: str, torrent: Path, out: Path, port: int | None, profile: Path | None, preset: str) -> list[str]:
    """The leecher's command; ``port``: the seeder's, None for no peer (the torrent's web seeds only)."""
    peer = ["--peer", f"127.0.0.1:{port}"] if port is not None else []
    if impl == "libtorrent":
        return [sys.executable, SELF, "--lt-leech", str(torrent), str(out), *peer, "--lt-preset", preset]
    prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
    return [
        sys.executable, *prof, "-m", "pyowtorrent", "download", str(torrent),
        "-o", str(out), *peer, "--listen", "127.0.0.1", "--json",
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


def run_case(
    case: str, run: int, ctx: argparse.Namespace, torrent: Path, seed_dir: Path, work: Path, size: int
) -> Result:
    seed_impl, leech_impl = CASES[case]
    res = Result(case, seed_impl, leech_impl, run)
    out = work / f"leech-{case}{run}"
    prof_s, prof_l = profile_paths(res, ctx, work)
    return run_pair(
        res,
        ctx,
        work,
        size,
        torrent,
        out,
        seeder_cmd(seed_impl, torrent, seed_dir, prof_s, ctx.lt_preset),
        lambda port: leecher_cmd(leech_impl, torrent, out, port, prof_l, ctx.lt_preset),
        prof_s,
        prof_l,
    )


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
) -> Result:
    """One transfer: start ``seed_cmd``, wait until it is seeding, then time ``leech_cmd(its port)`` into ``out``.

    The seeder is anything that prints pyowtorrent's JSON lines (``listening``,
    then a ``status`` in state ``seeding``); the leecher downloads ``torrent``'s
    payload into ``out`` (emptied first), which is checked against ``torrent``
    and deleted.  Fills in ``res``, whose ``case`` and ``run`` name the files.
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
        cpu0 = proc_cpu(seeder.pid) or (0.0, 0.0, 0)
        leecher = Child("leecher", leech_impl, leech_cmd(port), work, tag)
        children.append(leecher)
        spy(leecher)
        deadline = leecher.started + ctx.timeout
        leecher.wait_for(lambda d: d.get("event") == "listening", deadline, "listening line")
        res.startup = leecher.events[0][0] - leecher.started
        leecher.wait_for(lambda d: d.get("event") in ("completed", "done"), deadline, "verified-complete event")
        assert leecher.complete_at is not None
        cpu1 = proc_cpu(seeder.pid) or (0.0, 0.0, 0)
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
    p.add_argument("--only", default="abcd", help="cases, e.g. 'ad' or 'a,b' (default: abcd; ratios need a)")
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
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.lt_seed or args.lt_leech:
        return lt_main(args)
    cases = [c for c in args.only.lower() if c in CASES]
    if not cases or any(c not in CASES and c not in ", " for c in args.only.lower()):
        raise SystemExit(f"--only takes letters among {''.join(CASES)}")
    cases = sorted(set(cases))
    if args.files < 1 or args.repeat < 1:
        raise SystemExit("--files and --repeat must be at least 1")
    if args.timeout is None:
        args.timeout = 60 + args.size / 2e6
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

    def one(case: str, run_no: int) -> Result:
        seed_impl, leech_impl = CASES[case]
        log(f"case {case} run {run_no + 1}/{args.repeat}: {seed_impl} seeder → {leech_impl} leecher")
        return run_case(case, run_no, args, torrent, seed_dir, root, size)

    results, best = repeat_cases(args, cases, one)
    rows = [best[c] for c in cases]
    checks = targets(best)
    setup = {
        "payload": f"{human(size)} in {args.files} file{'s' * (args.files > 1)}",
        "size": size,
        "piece_length": args.piece_length,
        "num_pieces": meta.num_pieces,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "libtorrent": __import__("libtorrent").__version__,
        "lt_preset": args.lt_preset,
        "repeat": args.repeat,
        "profiled": args.profile,
        "loadavg_1min": os.getloadavg()[0],
    }
    if args.json:
        doc = {
            "setup": setup,
            "best": [asdict(r) for r in rows],
            "runs": [asdict(r) for r in results],
            "targets": [{"target": t, "met": ok, "value": v} for t, ok, v in checks],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"payload {setup['payload']}, piece length {human(args.piece_length)} ({meta.num_pieces} pieces), "
            f"loopback TCP, {os.cpu_count()} CPUs, Python {setup['python']}, "
            f"libtorrent {setup['libtorrent']} ({args.lt_preset} settings)"
            + (f", PROFILED ({args.profile}): times are not comparable" if args.profile else "")
        )
        print(
            "wall = leecher spawn → verified complete (start: spawn → listening, included); MB = 10^6 bytes; "
            "× (a) = MB/s / libtorrent→libtorrent's; "
            f"{'best of ' + str(args.repeat) if args.repeat > 1 else 'one run each'}"
        )
        print(table(rows, size))
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
