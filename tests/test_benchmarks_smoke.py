"""The benchmarks still run: each script at a tiny size, every case completing and verifying.

Not a performance test: no figure is asserted beyond "it moved bytes" (the
machines running the suite are shared and noisy; the benchmarks' README says
how to read real runs).  What this catches is rot: a renamed option, event or
helper the scripts depend on, which would otherwise be found only when
someone next wants a figure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import REPO

# Both scripts run libtorrent peers; like the rest of the suite, a missing wheel
# fails here rather than skipping (it is in the 'test' extra).
BENCHMARKS = REPO / "benchmarks"


def run_json(script: str, *args: str, tmp_path: Path) -> dict[str, Any]:
    """Run a benchmark with ``--json``; its document (it exits 1 if any case failed)."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args, "--dir", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # the scripts must not depend on where they are started from
        timeout=600,  # a hang guard, not a timing: a case's own deadline is far shorter
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def assert_every_case_moved_bytes(doc: dict[str, Any], cases: list[str]) -> None:
    best = {r["case"]: r for r in doc["best"]}
    assert sorted(best) == sorted(cases)
    for case, r in best.items():
        assert r["ok"], f"case {case}: {r['error']}"
        assert r["mb_s"] > 0 and r["seconds"] > 0, f"case {case}: {r}"
    assert all(r["ok"] for r in doc["runs"])


def test_bench_webseed_runs_every_case(tmp_path: Path) -> None:
    doc = run_json("bench_webseed.py", "--size", "4MiB", "--repeat", "1", tmp_path=tmp_path)
    assert_every_case_moved_bytes(doc, ["a", "w", "lw", "lt"])
    assert doc["setup"]["size"] == 4 << 20


def test_bench_swarm_runs_every_case(tmp_path: Path) -> None:
    # bench_webseed.py builds on bench_swarm.py's helpers: both stay runnable.
    doc = run_json("bench_swarm.py", "--size", "4MiB", "--repeat", "1", tmp_path=tmp_path)
    assert_every_case_moved_bytes(doc, ["a", "b", "c", "d"])


def test_bench_swarm_leechers_runs_every_case(tmp_path: Path) -> None:
    # One seeder and two leechers finding each other through a tracker on loopback.
    doc = run_json("bench_swarm.py", "--size", "4MiB", "--leechers", "2", "--repeat", "1", tmp_path=tmp_path)
    assert_every_case_moved_bytes(doc, ["a", "b", "c", "d", "m"])
    assert doc["setup"]["leechers"] == 2
    for r in doc["best"]:
        # Each leecher completed (and its copy verified, or the case would have failed).
        assert [f["impl"] for f in r["leecher_figures"]] == (
            ["pyowtorrent", "libtorrent"] if r["case"] == "m" else [r["leecher"]] * 2
        ), r
        assert all(f["seconds"] > 0 for f in r["leecher_figures"]), r


def test_bench_swarm_through_the_delaying_proxy(tmp_path: Path) -> None:
    # A 5 ms each way and a cap far above what 4 MiB needs: the proxy in the path, not a timing.
    args = ["--size", "4MiB", "--delay-ms", "5", "--rate-mbit", "2000", "--only", "abd", "--repeat", "1"]
    doc = run_json("bench_swarm.py", *args, tmp_path=tmp_path)
    assert_every_case_moved_bytes(doc, ["a", "b", "d"])
    assert doc["setup"]["proxy"]["delay_ms"] == 5
    for r in doc["best"]:
        stats = r["proxy"]
        assert stats["connections"] >= 1 and stats["bytes_to_client"] >= 4 << 20, r


def test_bench_hashing_runs_every_row(tmp_path: Path) -> None:
    # A small --size shrinks the baseline's hashing too (32 MiB a run): a couple of seconds.
    doc = run_json("bench_hashing.py", "--size", "8MiB", "--threads", "2", "--repeat", "1", tmp_path=tmp_path)
    names = [r["name"] for r in doc["rows"]]
    assert names == [
        "sha1 cache-resident, 1 thread",
        "sha1 cache-resident, 2 threads",
        "sha1 in memory, 16 MiB streamed",
        "naive read+sha1, 1 thread",
        "create_torrent",
        "verify_payload (in process)",
        "python -m pyowtorrent.verify",
    ]
    for r in doc["rows"]:
        assert r["mb_s"] > 0 and r["seconds"] > 0 and r["ratio"] > 0, r
    assert doc["baseline_mb_s"] == doc["rows"][0]["mb_s"]
    assert doc["setup"]["baseline_bytes_per_run"] <= 32 << 20
    ceiling = doc["ceiling"]
    assert ceiling["threads"] == 2 and ceiling["measured_mb_s"] == doc["rows"][1]["mb_s"]
    # openssl may be missing: then a reason instead of a figure, never a failure.
    check = doc["openssl_sha1"]
    assert (check["mb_s"] is None) == (check["hashlib_vs_openssl"] is None) == (check["note"] is not None)
