#!/usr/bin/env python3
"""The simulated swarm of the architecture issue: 1 seeder + 50 leechers, 64 MiB, in virtual time.

Prints, for one seed:

* the time the last leecher completed, against the lower bound the links
  allow (the swarm must move N copies through the sum of its upload rates,
  and the seeder must send every byte at least once);
* the seeder's upload as a multiple of the payload (1.0: it sent each piece
  once and the leechers shared the rest);
* real seconds per simulated minute (what the simulator costs on this machine).

    python benchmarks/bench_sim.py [--leechers 50] [--size-mib 64] [--seed 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyowtorrent.sim import make_payload, metainfo_for_bytes, run_virtual  # noqa: E402
from pyowtorrent.sim.swarm import PeerSpec, SwarmSim  # noqa: E402

SEED_UP, LEECH_UP, LEECH_DOWN = 2_000_000, 1_000_000, 10_000_000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--leechers", type=int, default=50)
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--piece-kib", type=int, default=256)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    size, n = args.size_mib << 20, args.leechers
    payload = make_payload(size, seed=size)
    meta = metainfo_for_bytes("dataset.zip", payload, args.piece_kib << 10)
    specs = [PeerSpec("seed", up=SEED_UP, down=LEECH_DOWN, latency=0.01, seed=True)]
    specs += [PeerSpec(f"l{i}", up=LEECH_UP, down=LEECH_DOWN, latency=0.01 + 0.14 * i / max(1, n - 1)) for i in range(n)]

    async def run() -> SwarmSim:
        sim = SwarmSim(meta, payload, seed=args.seed)
        await sim.run(specs, until=24 * 3600.0)
        return sim

    started = time.perf_counter()
    sim = run_virtual(run(), seed=args.seed)
    real = time.perf_counter() - started
    times = [p.completed_at for p in sim.leechers]
    if any(t is None for t in times):
        print(f"{sum(t is None for t in times)} leechers did not complete", file=sys.stderr)
        return 1
    done = max(t for t in times if t is not None)
    bound = max(size / SEED_UP, n * size / (SEED_UP + n * LEECH_UP), size / LEECH_DOWN)
    multiple = sim.peers["seed"].torrent.uploaded_bytes / size
    print(f"swarm: 1 seeder ({SEED_UP / 1e6:g} MB/s up) + {n} leechers ({LEECH_UP / 1e6:g} up / {LEECH_DOWN / 1e6:g} down MB/s), "
          f"{args.size_mib} MiB in {args.piece_kib} KiB pieces, 10-150 ms one way, seed {args.seed}")
    print(f"last leecher done:      {done:8.1f} s virtual")
    print(f"lower bound (links):    {bound:8.1f} s   -> {done / bound:.2f} x the bound")
    print(f"seeder upload:          {multiple:8.2f} x the payload")
    print(f"real time:              {real:8.1f} s   -> {real / (done / 60):.1f} real s per simulated minute")
    print(f"trace digest:           {sim.digest()[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
