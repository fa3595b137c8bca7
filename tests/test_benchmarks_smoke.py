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
