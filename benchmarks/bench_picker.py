"""Scale check for the piece picker: 100 000 pieces and 200 peers by default.

Not a test: it asserts nothing about time. It drives one :class:`PiecePicker`
through what a large swarm does to it and prints the cost of each operation:

* ``peer_bitfield``: every peer announces a random bitfield (densities vary
  from peer to peer); the bulk path adds the counters and defers the sort,
  which ``re-sort after bitfields`` then pays once;
* ``peer_bitfield (per piece)``: the same on a fresh picker forced onto the
  piece-by-piece path, for a handful of peers, to show what the bulk path saves;
* ``peer_have``: random ``have`` messages for pieces peers lack;
* ``pick`` / ``on_block_received`` / ``on_piece_passed``: round-robin, each
  peer asks for ``--pick`` blocks, then every requested block arrives and
  complete pieces pass, until the download is done or ``--rounds`` ran out.

Two baselines on the same machine make the figures readable as ratios on a
noisy host (each the best of five runs): a plain ``for`` loop doing one list update per item, and
``random.random()`` calls. The last column is how many baseline operations
one operation costs.

    python benchmarks/bench_picker.py [--pieces N] [--peers N] [--rounds N]
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyowtorrent.metainfo.layout import BLOCK_SIZE as BLOCK  # noqa: E402
from pyowtorrent.strategy.picker import Block, PiecePicker  # noqa: E402
from pyowtorrent.wire.bitfield import bitfield_flags  # noqa: E402


class Row:
    def __init__(self, name: str, count: int, seconds: float) -> None:
        self.name, self.count, self.seconds = name, count, seconds

    @property
    def per_op(self) -> float:
        return self.seconds / self.count if self.count else 0.0


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    count = fn()
    return count, time.perf_counter() - start


def baseline_loop(n: int) -> int:
    counts = [0] * 1000
    for i in range(n):
        counts[i % 1000] += 1
    return n


def baseline_random(n: int) -> int:
    r = random.Random(0).random
    for _ in range(n):
        r()
    return n


def random_bitfields(rng: random.Random, num_pieces: int, num_peers: int) -> list[bytearray]:
    out = []
    nbytes = (num_pieces + 7) // 8
    for _ in range(num_peers):
        # AND / OR of random words: densities of 1/4, 1/2 and 3/4
        a, b = rng.getrandbits(8 * nbytes), rng.getrandbits(8 * nbytes)
        word = (a & b, a, a | b)[rng.randrange(3)]
        word &= ~((1 << (8 * nbytes - num_pieces)) - 1)  # spare bits must be zero
        out.append(bitfield_flags(word.to_bytes(nbytes, "big"), num_pieces))
    # a piece nobody has would never finish: give it to someone
    for i in range(num_pieces):
        if not any(bits[i] for bits in out):
            out[rng.randrange(num_peers)][i] = 1
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pieces", type=int, default=100_000)
    ap.add_argument("--peers", type=int, default=200)
    ap.add_argument("--blocks-per-piece", type=int, default=16, help="piece length in 16 KiB blocks")
    ap.add_argument("--pick", type=int, default=16, help="blocks asked for per peer per round")
    ap.add_argument("--haves", type=int, default=500, help="have messages per peer")
    ap.add_argument("--rounds", type=int, default=0, help="stop picking after this many rounds (0: until done)")
    ap.add_argument("--incremental-peers", type=int, default=10, help="peers for the per-piece bitfield figure")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    n: int = args.pieces
    npeers: int = args.peers
    rng = random.Random(args.seed)
    piece_length = args.blocks_per_piece * BLOCK
    total = n * piece_length - BLOCK // 2  # a short last block, as in real torrents
    rows: list[Row] = []

    # best of several short runs: a busy neighbour should not inflate the yardstick
    base_n = 400_000
    for name, fn in (("baseline: loop, one list update", baseline_loop), ("baseline: random.random()", baseline_random)):
        best = min(timed(lambda: fn(base_n))[1] for _ in range(5))
        rows.append(Row(name, base_n, best))

    bitfields = random_bitfields(rng, n, npeers)
    picker = PiecePicker(n, piece_length, total, seed=args.seed)

    def bitfields_bulk() -> int:
        for bits in bitfields:
            picker.peer_bitfield(bits)
        return npeers

    rows.append(Row("peer_bitfield", *timed(bitfields_bulk)))
    # the bulk path leaves the arrays unsorted until the next pick; time that sort on its own
    def resort() -> int:
        picker._availability.clean()  # what the first pick() would do
        return 1

    rows.append(Row("re-sort after bitfields", *timed(resort)))

    inc_peers = bitfields[: args.incremental_peers]
    other = PiecePicker(n, piece_length, total, seed=args.seed)
    other._availability.bulk_min = n + 1  # force the piece-by-piece path

    def bitfields_incremental() -> int:
        for bits in inc_peers:
            other.peer_bitfield(bits)
        return len(inc_peers)

    rows.append(Row("peer_bitfield (per piece)", *timed(bitfields_incremental)))
    del other

    haves: list[tuple[int, int]] = []
    for p, bits in enumerate(bitfields):
        lacking = [i for i in range(n) if not bits[i]]
        for i in rng.sample(lacking, min(args.haves, len(lacking))):
            haves.append((p, i))
    rng.shuffle(haves)

    def send_haves() -> int:
        for p, i in haves:
            bitfields[p][i] = 1
            picker.peer_have(i)
        return len(haves)

    rows.append(Row("peer_have", *timed(send_haves)))

    pick_t = recv_t = pass_t = 0.0
    picks = blocks_out = received = passed = rounds = 0
    clock = time.perf_counter
    while not picker.is_finished() and (args.rounds == 0 or rounds < args.rounds):
        rounds += 1
        in_flight: list[tuple[int, Block]] = []
        t0 = clock()
        for p in range(npeers):
            for block in picker.pick(p, bitfields[p], args.pick):
                in_flight.append((p, block))
        pick_t += clock() - t0
        picks += npeers
        blocks_out += len(in_flight)
        done: list[int] = []
        t0 = clock()
        for p, block in in_flight:
            complete, _cancel = picker.on_block_received(p, block)
            if complete:
                done.append(block.index)
        recv_t += clock() - t0
        received += len(in_flight)
        t0 = clock()
        for i in done:
            picker.on_piece_passed(i)
        pass_t += clock() - t0
        passed += len(done)
    rows.append(Row(f"pick ({args.pick} blocks)", picks, pick_t))
    rows.append(Row("on_block_received", received, recv_t))
    rows.append(Row("on_piece_passed", passed, pass_t))

    print(f"pyowtorrent piece picker: {n:,} pieces of {piece_length // 1024} KiB, {npeers} peers, seed {args.seed}")
    print(f"Python {platform.python_version()} on {platform.machine()}; {rounds} pick rounds, "
          f"{blocks_out:,} blocks requested, {passed:,} pieces passed, finished: {picker.is_finished()}")
    loop_op = rows[0].per_op
    print(f"\n{'operation':34} {'count':>10} {'seconds':>9} {'us/op':>10} {'ops/s':>12} {'x loop':>9}")
    for row in rows:
        ops = row.count / row.seconds if row.seconds else float("inf")
        print(f"{row.name:34} {row.count:>10,} {row.seconds:>9.3f} {row.per_op * 1e6:>10.3f} "
              f"{ops:>12,.0f} {row.per_op / loop_op:>9.1f}")


if __name__ == "__main__":
    main()
