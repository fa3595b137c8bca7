"""The large-torrent and many-connection benchmarks still run: each at a tiny size, verifying what it moved.

Not a performance test: no time is asserted (the machines running the suite
are shared and noisy; ``benchmarks/README.md`` says how to read real runs).
What this catches is rot: an engine name, event or option the scripts depend
on that changed, found here rather than when someone next wants a figure.
"""

from __future__ import annotations

from pathlib import Path

from .test_benchmarks_smoke import run_json


def test_bench_large_measures_startup_memory_and_scaling(tmp_path: Path) -> None:
    doc = run_json(
        "bench_large.py", "--pieces", "2000", "--small-pieces", "1000", "--peers", "20", "--haves", "500",
        "--repeat", "1", tmp_path=tmp_path,
    )  # fmt: skip
    assert doc["setup"]["pieces"] == 2000
    st = doc["startup"]
    for key in ("with_resume", "without_resume", "trusted_pieces", "save_total", "have_flags", "write"):
        assert st[key] > 0, key
    assert st["resume_bytes"] > 0
    seed, leech = doc["memory"]["seed"], doc["memory"]["leech"]
    assert seed["state"] == "seeding" and seed["pieces_have"] == 2000
    assert leech["state"] == "downloading" and leech["pieces_have"] == 0
    for m in (seed, leech):
        assert m["rss_held"] > 0 and m["traced_held"] > 0
    assert leech["sim_peers"] == 20 and leech["traced_peers"] > 0
    rows = {r["key"]: r for r in doc["scaling"]}
    expected = {
        "baseline", "bitfield", "have", "pick_early", "pick_late", "received", "passed", "join", "leave", "pick_nothing",
        "pick_nothing_first", "pick_nothing_have",
        "e_bitfield", "e_have", "e_have_pick", "e_passed", "e_greet", "e_have_flags", "e_have_stuck", "e_wants_from",
    }  # fmt: skip
    assert expected <= set(rows), expected - set(rows)
    for r in rows.values():
        assert r["us_small"] > 0 and r["us_large"] > 0 and r["count_large"] > 0, r
    assert not list(tmp_path.glob("pyow-large-*")), "the payload was left behind"


def test_bench_seed_many_serves_and_verifies_every_block(tmp_path: Path) -> None:
    doc = run_json(
        "bench_seed_many.py", "--size", "16MiB", "--connections", "8", "--seconds", "2", "--warmup", "1",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert doc["ok"] and doc["setup"]["seeder"] == "cli"
    assert doc["verify"]["blocks"] > 0 and doc["verify"]["bad"] == 0
    cn = doc["connections"]
    assert cn["handshaken"] == 8 and cn["errors"] == []
    assert cn["served_in_window"] >= 1
    assert 1 <= cn["peak_unchoked"] <= 9  # eight upload slots (one optimistic), and a choke may cross an unchoke
    assert doc["bytes"] > 0 and doc["mb_s"] > 0
    lat = doc["latency_ms"]
    assert lat["count"] > 0 and 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert doc["client"]["cpu_s"] >= 0 and doc["seeder"]["cpu_s"] is not None


def test_bench_seed_many_with_more_upload_slots(tmp_path: Path) -> None:
    # --upload-slots runs the seeder as a Session of the script's own (the CLI has no such option)
    doc = run_json(
        "bench_seed_many.py", "--size", "16MiB", "--connections", "6", "--seconds", "2", "--warmup", "1",
        "--upload-slots", "6", "--pattern", "random", "--client-procs", "2", tmp_path=tmp_path,
    )  # fmt: skip
    assert doc["ok"] and doc["setup"]["seeder"] == "session" and doc["setup"]["client_procs"] == 2
    assert doc["verify"]["bad"] == 0
    assert doc["connections"]["handshaken"] == 6
    assert doc["connections"]["peak_unchoked"] == 6
