"""Fuzzing the real engine with hostile peers, in the simulator (issue 9).

Each hypothesis example is a small swarm in virtual time: one honest seeder
and one honest leecher (real engine sessions, ``SwarmSim``) and one to three
hostile peers on their own simulated hosts.  What the hostile peers do is
drawn: what they send where the handshake should be, then scripts of wire
messages, valid and invalid, cut at random byte boundaries across writes,
floods, pauses, silence and hang-ups mid-message; and how they answer the
engine's requests (right data, wrong data, short or shifted blocks, rejects,
nothing).  They dial the seeder and the leecher, and the honest peers dial
them (their addresses are given with ``Torrent.add_peer``).

For every example:

* the leecher completes, byte-exact, within a bound on virtual time (what
  the seeder uploaded, at its link's rate, plus ``SLACK``; derived below);
* neither honest torrent goes to ``TorrentState.ERROR``;
* nothing under ``pyowtorrent`` logs at ERROR or with a traceback, and
  asyncio reports no unretrieved task exception;
* the loop never raises ``SimulationStalled``;
* and the harness itself hit no unexpected exception (a hostile peer's own
  bug must not pass for the engine's robustness).

``PYOWTORRENT_FUZZ_EXAMPLES`` sets the number of examples (default
``DEFAULT_EXAMPLES``): ten times as many looks for rarer failures.  The
engine bugs the fuzzer found are pinned by the tests at the end of the file;
those still open are set aside when they explain a late download (see
``STRICT``; ``PYOWTORRENT_FUZZ_STRICT=1`` sets nothing aside).
``--hypothesis-show-statistics`` shows what the examples made the engine do.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import random
import struct
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pyowtorrent.engine.events import (
    PeerBanned,
    PeerDisconnected,
    PieceFailed,
    StateChanged,
    TorrentFailed,
    TorrentState,
)
from pyowtorrent.engine.peer import Peer
from pyowtorrent.metainfo.bencoding import encode
from pyowtorrent.metainfo.layout import BLOCK_SIZE
from pyowtorrent.metainfo.torrent_file import Metainfo
from pyowtorrent.sim import SimHost, SimulationStalled, make_payload, metainfo_for_bytes, run_virtual
from pyowtorrent.sim.swarm import PORT, PeerSpec, SwarmSim
from pyowtorrent.wire.handshake import HANDSHAKE_LENGTH, PROTOCOL

from ..hostile import Attacker

KiB = 1 << 10
MiB = 1 << 20
PIECE = 64 * KiB
# A whole number of pieces, one with a short last piece whose last block is short, and 2 MiB.
SIZES = (1 * MiB, 1 * MiB + 512 * KiB + 12_345, 2 * MiB)

DEFAULT_EXAMPLES = 75
EXAMPLES = int(os.environ.get("PYOWTORRENT_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))

# The honest links: the seeder's upload is the swarm's bottleneck, slow enough
# that a download lasts long enough (4-9 s) for the hostile peers to act during
# it.
SEED_UP = 250_000
LEECH_UP = 250_000
HONEST_DOWN = 2_000_000
HOSTILE_LINK = 1_000_000
LEECH_JOIN = 1.0
# The run ends when the leecher completes, so hostile peers act early: they
# dial within LAST_DIAL seconds of the start, and pause for a few seconds at most.
LAST_DIAL = 6.0

# The virtual-time bound on the leecher's download, from its join, per example:
#
#     bound = (payload bytes the seeder uploaded) / SEED_UP + SLACK
#
# The seeder's upload is the swarm's bottleneck: alone with it the leecher
# takes size / SEED_UP (at most 2 MiB / 250 kB/s = 8.4 s).  Hostile peers may
# legitimately take a share of that upload (they ask for blocks and read them),
# and the seeder may send the leecher a block twice in the end-game: the first
# term counts every byte the seeder sent, to whomever.  SLACK covers what else
# the engine's own rules allow a hostile peer to cost: a block asked of a
# hostile "seeder" that never answers is asked again elsewhere at the latest
# after the request timeout (20 s); pieces a liar spoils are fetched again (64
# KiB each, a fraction of a second) until it is banned; connection set-up
# and handshakes take a few round trips (< 1 s).  So SLACK = 20 + 5 s.  A
# hostile-free run takes 4.2-8.4 s.  Measured over 2,400 examples: the slowest
# took 14.1 s, 13.3 s of it the seeder's uploads (hostile peers downloaded
# too); none took more than 3.8 s beyond its upload term.  A bug that costs
# the leecher one back-off (64 s), or a lost piece, fails the bound.
REQUEST_TIMEOUT = 20.0  # the engine's default (Session(request_timeout=...))
SLACK = REQUEST_TIMEOUT + 5.0
# How long a run may last: the bound for 2 MiB with the seeder's whole upload
# going to hostile peers for a further minute.
UNTIL = LEECH_JOIN + 2 * MiB / SEED_UP + SLACK + 60.0

# Engine bugs found here, each pinned by a test at the end of this file (C, still
# open, by a strict xfail; D1 and D2 are fixed, and no longer set aside):
#   C. a peer that corrupts some blocks of a piece and leaves the others
#      unanswered (the end-game gets those from the seeder) makes the piece
#      fail its hash for ever: it is never the sole sender, and the piece never
#      passes, so smart ban never convicts it;
#   D1. the seeder takes a leecher that reads at its link's full rate for a
#      stalled reader (its send buffer stays at one level), and chokes it;
#   D2. the rejects BEP 6 sends with a choke put the leecher in reject
#      back-off, up to 64 s at once, and it stays there after the unchoke.
# The fuzz test sets aside an example that fails only its completion bound
# when the open bug explains it: C, if the pieces the leecher lacks failed
# their hash again and again.  It counts such examples
# in the statistics and goes on looking for new bugs; every other check still
# holds for them.  PYOWTORRENT_FUZZ_STRICT=1 sets nothing aside: the setting
# to check a fix with.
STRICT = os.environ.get("PYOWTORRENT_FUZZ_STRICT") == "1"
# C's trace: every piece the leecher lacks failed its hash this often.
LIVELOCK_FAILURES = 5


# -- the torrent's shape, as the strategies see it -------------------------------------------


@functools.cache
def torrent(size: int) -> tuple[Metainfo, bytes]:
    payload = make_payload(size, seed=size)
    return metainfo_for_bytes("dataset.zip", payload, PIECE), payload


@dataclass(frozen=True)
class Shape:
    size: int

    @property
    def num_pieces(self) -> int:
        return -(-self.size // PIECE)

    def piece_size(self, index: int) -> int:
        return self.size - PIECE * (self.num_pieces - 1) if index == self.num_pieces - 1 else PIECE

    @property
    def bitfield_length(self) -> int:
        return (self.num_pieces + 7) // 8

    def full_bitfield(self) -> bytes:
        bits = bytearray(b"\xff" * self.bitfield_length)
        spare = self.bitfield_length * 8 - self.num_pieces
        bits[-1] &= (0xFF << spare) & 0xFF
        return bytes(bits)


# -- what a hostile peer does -------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    """Bytes on the wire, with a short description for the failing example's report."""

    what: str
    data: bytes

    def __repr__(self) -> str:
        return self.what


@dataclass(frozen=True)
class Send:
    """Messages written in pieces, cut at ``cuts``, ``gap`` seconds apart."""

    msgs: tuple[Msg, ...]
    cuts: tuple[int, ...] = ()
    gap: float = 0.0

    @property
    def data(self) -> bytes:
        return b"".join(m.data for m in self.msgs)


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Flood:
    unit: Msg
    count: int


@dataclass(frozen=True)
class Hangup:
    """Write the first bytes of a message, then close (or reset) the connection."""

    partial: Msg
    abort: bool


@dataclass(frozen=True)
class Silence:
    """Say nothing more; wait for the other side to hang up (or the run to end)."""


Action = Send | Pause | Flood | Hangup | Silence


@dataclass(frozen=True)
class Opening:
    """What goes where the handshake should.

    ``kind``: ``proper`` (protocol string, ``reserved``, the info-hash, a peer id),
    ``wrong-hash``, ``truncated`` (the first ``cut`` bytes of a proper one),
    ``junk`` (``junk`` instead), or ``none``.  ``peer_id``: ``own`` (ours, made
    from ``id_seed``), or ``seed``/``leech`` (that peer's: impersonation).
    ``wait``: when dialled, read the dialler's handshake before answering.
    """

    kind: str
    reserved: bytes = bytes(8)
    peer_id: str = "own"
    id_seed: int = 0
    cut: int = 0
    junk: bytes = b""
    wait: bool = True


@dataclass(frozen=True)
class Talk:
    """One connection's behaviour: the opening, a script, then how it answers requests.

    ``answers`` is cycled over the engine's requests (empty: requests go
    unanswered); ``read`` False: it never reads a byte; ``then``: after the
    script, ``linger`` (stay, answering) or ``close``.
    """

    opening: Opening
    script: tuple[Action, ...]
    answers: tuple[str, ...] = ()
    read: bool = True
    then: str = "linger"


@dataclass(frozen=True)
class Dial:
    target: str  # "seed" or "leech"
    at: float  # virtual seconds from the start (not before the target has joined)
    talk: Talk


@dataclass(frozen=True)
class Hostile:
    latency: float
    known_by: tuple[str, ...]  # honest peers given its address: they dial it
    incoming: Talk  # what it does on each connection an honest peer makes to it
    dials: tuple[Dial, ...]


@dataclass(frozen=True)
class Scenario:
    size: int
    seed: int
    hostiles: tuple[Hostile, ...]


# -- strategies: messages ------------------------------------------------------------------------

U32 = (1 << 32) - 1
ANSWERS = ("honest", "corrupt", "random", "short", "long", "shifted", "other-block", "reject", "ignore", "twice")


def frame(msg_id: int, body: bytes = b"") -> bytes:
    return struct.pack(">IB", 1 + len(body), msg_id) + body


def filler(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def real_indexes(shape: Shape) -> st.SearchStrategy[int]:
    return st.integers(0, shape.num_pieces - 1)


def wrong_indexes(shape: Shape) -> st.SearchStrategy[int]:
    """Past the last piece: just past, or far."""
    n = shape.num_pieces
    return st.one_of(st.sampled_from([n, n + 1, 1 << 31, U32]), st.integers(n, U32))


def indexes(shape: Shape) -> st.SearchStrategy[int]:
    """In range or not."""
    return st.one_of(real_indexes(shape), wrong_indexes(shape))


def real_blocks(shape: Shape) -> st.SearchStrategy[tuple[int, int, int]]:
    """(index, begin, length) of a block of the torrent."""

    @st.composite
    def real(draw: st.DrawFn) -> tuple[int, int, int]:
        i = draw(real_indexes(shape))
        size = shape.piece_size(i)
        b = draw(st.integers(0, (size - 1) // BLOCK_SIZE)) * BLOCK_SIZE
        return i, b, min(BLOCK_SIZE, size - b)

    return real()


def wrong_blocks(shape: Shape) -> st.SearchStrategy[tuple[int, int, int]]:
    """Not a block of the torrent: beside a real one (an offset or a length off by a little), in a
    piece past the last, or anything at all."""

    @st.composite
    def near(draw: st.DrawFn) -> tuple[int, int, int]:
        i, b, n = draw(real_blocks(shape))
        which = draw(st.sampled_from(["begin", "length", "both"]))
        if which in ("begin", "both"):
            b = draw(st.sampled_from([b + 1, b - 1 if b else U32, shape.piece_size(i), shape.piece_size(i) - 1, PIECE]))
        if which in ("length", "both"):
            n = draw(st.sampled_from([0, 1, n - 1, n + 1, BLOCK_SIZE + 1, 2 * BLOCK_SIZE, 1 << 31, U32]))
        return i, b & U32, n & U32

    far = st.tuples(indexes(shape), st.integers(0, U32), st.integers(0, U32))
    elsewhere = st.tuples(wrong_indexes(shape), st.sampled_from([0, BLOCK_SIZE]), st.just(BLOCK_SIZE))
    return st.one_of(near(), far, elsewhere)


bencodable = st.recursive(
    st.integers(-(1 << 70), 1 << 70) | st.binary(max_size=24),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.binary(max_size=8), inner, max_size=3),
    max_leaves=6,
)
extension_names = st.sampled_from([b"ut_metadata", b"ut_pex", b"lt_donthave", b"\xff\xfe", b""]) | st.binary(
    max_size=10
)
# BEP 10's dictionary with every well-known key of every type, and odd values where the type is right.
extension_dicts = st.fixed_dictionaries(
    {},
    optional={
        b"m": st.dictionaries(extension_names, st.integers(-5, 300) | bencodable, max_size=4) | bencodable,
        b"v": st.binary(max_size=100) | bencodable,
        b"reqq": st.sampled_from([0, 1, -1, 500, 1 << 31, 1 << 64, 10**19]) | st.integers() | bencodable,
        b"p": st.integers(-1, 70_000) | bencodable,
        b"yourip": st.binary(max_size=17) | bencodable,
        b"metadata_size": st.integers(-1, 1 << 40) | bencodable,
        b"e": st.integers(0, 1),
    },
)
# ... and one a real client might send.
plain_extension_dicts = st.fixed_dictionaries(
    {b"m": st.dictionaries(st.sampled_from([b"ut_metadata", b"ut_pex"]), st.integers(1, 255), max_size=2)},
    optional={
        b"v": st.sampled_from([b"qBittorrent 4.6", b"\xe2\x98\x83"]),
        b"reqq": st.integers(1, 2000),
        b"p": st.integers(1, 65535),
    },
)

BARE = [("choke", 0), ("unchoke", 1), ("interested", 2), ("not-interested", 3)]


def valid_messages(shape: Shape) -> st.SearchStrategy[Msg]:
    """Messages that break no rule of BEP 3, 6 or 10 after an opening with the fast and extension bits."""
    bare = st.sampled_from(BARE).map(lambda t: Msg(t[0], frame(t[1])))
    indexed = st.builds(
        lambda kind, i: Msg(f"{kind[0]}({i})", frame(kind[1], struct.pack(">I", i))),
        st.sampled_from([("have", 4), ("suggest", 13), ("allowed-fast", 17)]),
        real_indexes(shape),
    )
    with_block = st.builds(
        lambda kind, blk: Msg(f"{kind[0]}{blk}", frame(kind[1], struct.pack(">III", *blk))),
        st.sampled_from([("request", 6), ("cancel", 8)]),
        real_blocks(shape),
    )
    ext = plain_extension_dicts.map(lambda d: Msg(f"ext-handshake({d!r})", frame(20, b"\x00" + encode(d))))
    return st.one_of(
        st.just(Msg("keep-alive", bytes(4))),
        bare,
        indexed,
        with_block,
        with_block,
        st.integers(1, 65535).map(lambda p: Msg(f"port({p})", frame(9, struct.pack(">H", p)))),
        ext,
    )


def invalid_messages(shape: Shape) -> st.SearchStrategy[Msg]:
    """Messages that are wrong in themselves or at most times: every kind, with fields right and wrong."""
    firsts = st.sampled_from([("have-all", 14), ("have-none", 15)]).map(lambda t: Msg(t[0], frame(t[1])))
    indexed = st.builds(
        lambda kind, i: Msg(f"{kind[0]}({i})", frame(kind[1], struct.pack(">I", i))),
        st.sampled_from([("have", 4), ("suggest", 13), ("allowed-fast", 17)]),
        wrong_indexes(shape),
    )
    with_block = st.builds(
        lambda kind, blk: Msg(f"{kind[0]}{blk}", frame(kind[1], struct.pack(">III", *blk))),
        st.sampled_from([("request", 6), ("cancel", 8), ("reject", 16)]),
        wrong_blocks(shape) | real_blocks(shape),  # a reject of a real block: never requested
    )

    @st.composite
    def bitfield(draw: st.DrawFn) -> Msg:
        right = shape.bitfield_length
        n = draw(st.sampled_from([right, right, right, 0, right - 1, right + 1, 2 * right]))
        kind = draw(st.sampled_from(["full", "spare-bits", "random", "zeros"]))
        if kind == "full" and n == right:
            bits = shape.full_bitfield()
        elif kind == "zeros":
            bits = bytes(n)
        elif kind == "spare-bits":
            bits = b"\xff" * n
        else:
            bits = filler(draw(st.integers(0, U32)), n)
        return Msg(f"bitfield({kind},{n}B)", frame(5, bits))

    @st.composite
    def piece(draw: st.DrawFn) -> Msg:
        """A piece nobody asked for (on a connection of its own, nothing was asked of it)."""
        i, b, n = draw(real_blocks(shape) | wrong_blocks(shape))
        n = min(n, draw(st.sampled_from([BLOCK_SIZE, BLOCK_SIZE + 1, 0, 1, 100])))
        _, payload = torrent(shape.size)
        start = i * PIECE + b
        right = draw(st.booleans()) and start + n <= len(payload)
        block = payload[start : start + n] if right else filler(draw(st.integers(0, U32)), n)
        what = f"piece({i},{b},{n}{',right' if right else ''})"
        return Msg(what, frame(7, struct.pack(">II", i & U32, b & U32) + block))

    port = st.builds(lambda body: Msg(f"port({body.hex()})", frame(9, body)), st.binary(min_size=0, max_size=4))

    @st.composite
    def extended(draw: st.DrawFn) -> Msg:
        kind = draw(st.sampled_from(["handshake", "handshake", "garbage", "huge", "message"]))
        if kind == "handshake":
            body = encode(draw(extension_dicts))
            return Msg(f"ext-handshake({body[:60]!r})", frame(20, b"\x00" + body))
        if kind == "garbage":
            odd = [b"de", b"d1:md", b"l1:me", b"i1e", b"d" * 200 + b"e" * 200]
            body = draw(st.binary(max_size=40) | st.sampled_from(odd))
            return Msg(f"ext-handshake-garbage({body[:40]!r})", frame(20, b"\x00" + body))
        if kind == "huge":
            n = draw(st.sampled_from([16 * KiB, 16 * KiB + 1, 64 * KiB]))
            return Msg(f"ext-handshake({n}B)", frame(20, b"\x00d1:v" + str(n).encode() + b":" + bytes(n) + b"e"))
        ext_id = draw(st.integers(1, 255))
        body = draw(st.binary(max_size=40))
        return Msg(f"extended({ext_id},{body[:20]!r})", frame(20, bytes([ext_id]) + body))

    @st.composite
    def malformed(draw: st.DrawFn) -> Msg:
        kind = draw(st.sampled_from(["unknown-id", "wrong-length", "huge-length", "no-id"]))
        if kind == "unknown-id":
            msg_id = draw(st.sampled_from([10, 11, 12, 18, 19, 21, 255]) | st.integers(0, 255))
            return Msg(f"id{msg_id}", frame(msg_id, draw(st.binary(max_size=16))))
        if kind == "wrong-length":
            msg_id = draw(st.sampled_from([0, 1, 4, 6, 8, 9, 13, 14, 16, 17, 20]))
            return Msg(f"id{msg_id}-length", frame(msg_id, draw(st.binary(max_size=20))))
        if kind == "huge-length":
            length = draw(st.sampled_from([U32, 1 << 31, 1 << 20, (1 << 20) + 1, BLOCK_SIZE + 10, 2 * BLOCK_SIZE]))
            msg_id = draw(st.sampled_from([7, 5, 20, 0]))
            tail = draw(st.binary(max_size=8))
            return Msg(f"length({length},id{msg_id})", struct.pack(">IB", length, msg_id) + tail)
        return Msg("length(1,no-id)", struct.pack(">I", 1))

    return st.one_of(
        firsts, indexed, indexed, with_block, with_block, bitfield(), piece(), port, extended(), malformed()
    )


def messages(shape: Shape) -> st.SearchStrategy[Msg]:
    return st.one_of(valid_messages(shape), invalid_messages(shape))


def claims(shape: Shape, *, fast: bool) -> st.SearchStrategy[tuple[Msg, ...]]:
    """How a hostile 'seeder' says it has pieces (all, or a few), then unchokes."""
    have_all = Msg("have-all", frame(14))
    full = Msg("bitfield(full)", frame(5, shape.full_bitfield()))
    unchoke = Msg("unchoke", frame(1))

    @st.composite
    def some(draw: st.DrawFn) -> tuple[Msg, ...]:
        picked = draw(st.lists(real_indexes(shape), min_size=1, max_size=6, unique=True))
        bits = bytearray(shape.bitfield_length)
        for i in picked:
            bits[i // 8] |= 0x80 >> (i % 8)
        return (Msg(f"bitfield({sorted(picked)})", frame(5, bytes(bits))), unchoke)

    if fast:
        return st.one_of(st.just((have_all, unchoke)), st.just((full, unchoke)), some())
    return st.one_of(st.just((full, unchoke)), some())


# -- strategies: behaviour -----------------------------------------------------------------------

gaps = st.sampled_from([0.0, 0.001, 0.001, 0.02, 0.2])
pauses = st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0, 2.0, 4.0])
flood_counts = st.sampled_from([400, 499, 500, 501, 1000, 1001, 1500, 3000]) | st.integers(1, 3000)


def actions(shape: Shape, msgs: st.SearchStrategy[Msg]) -> st.SearchStrategy[Action]:
    @st.composite
    def send(draw: st.DrawFn) -> Send:
        sent = tuple(draw(st.lists(msgs, min_size=1, max_size=3)))
        total = sum(len(m.data) for m in sent)
        cuts = tuple(sorted(set(draw(st.lists(st.integers(1, max(1, total - 1)), max_size=4))))) if total > 1 else ()
        return Send(sent, cuts, draw(gaps))

    @st.composite
    def flood(draw: st.DrawFn) -> Flood:
        """Many of one message that keeps the rules once: keep-alives, a have again, a request
        (while choked, past the 1000 allowed), cancels of nothing, interest, an unchoke, ..."""
        i, b, n = draw(real_blocks(shape))
        unit = draw(
            st.sampled_from(
                [
                    Msg("keep-alive", bytes(4)),
                    Msg(f"have({i})", frame(4, struct.pack(">I", i))),
                    Msg(f"request{(i, b, n)}", frame(6, struct.pack(">III", i, b, n))),
                    Msg(f"cancel{(i, b, n)}", frame(8, struct.pack(">III", i, b, n))),
                    Msg("interested", frame(2)),
                    Msg("unchoke", frame(1)),
                    Msg(f"suggest({i})", frame(13, struct.pack(">I", i))),
                    Msg("port", frame(9, b"\x1a\xe1")),
                ]
            )
        )
        return Flood(unit, draw(flood_counts))

    @st.composite
    def hangup(draw: st.DrawFn) -> Hangup:
        m = draw(msgs)
        cut = draw(st.integers(0, len(m.data) - 1))  # every message is at least 4 bytes: it stays unfinished
        return Hangup(Msg(f"first {cut}B of {m.what}", m.data[:cut]), draw(st.booleans()))

    return st.one_of(send(), send(), send(), st.builds(Pause, pauses), flood(), hangup(), st.just(Silence()))


def reserved_bits(*, fast: bool | None = None, ext: bool | None = None) -> st.SearchStrategy[bytes]:
    """The handshake's 8 reserved bytes: the bits we know (drawn unless given), or anything at all."""
    maybe = st.booleans()
    flags = st.builds(
        lambda f, e, dht: bytes([0, 0, 0, 0, 0, 0x10 if e else 0, 0, (0x04 if f else 0) | (0x01 if dht else 0)]),
        maybe if fast is None else st.just(fast),
        maybe if ext is None else st.just(ext),
        maybe,
    )
    if fast is None and ext is None:
        return st.one_of(flags, flags, st.binary(min_size=8, max_size=8))
    return flags


peer_ids = st.sampled_from(["own", "own", "own", "seed", "leech"])


@st.composite
def openings(draw: st.DrawFn, reserved: st.SearchStrategy[bytes] | None = None, proper: bool = False) -> Opening:
    common = dict(
        reserved=draw(reserved if reserved is not None else reserved_bits()),
        peer_id=draw(peer_ids),
        id_seed=draw(st.integers(0, U32)),
        wait=draw(st.booleans()),
    )
    kind = "proper" if proper else draw(st.sampled_from(["proper"] * 6 + ["wrong-hash", "truncated", "junk", "none"]))
    if kind == "truncated":
        return Opening(kind, cut=draw(st.integers(0, HANDSHAKE_LENGTH - 1)), **common)
    if kind == "junk":
        junk = draw(
            st.one_of(
                st.binary(min_size=1, max_size=100),
                st.sampled_from(
                    [
                        b"GET /announce HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"HTTP/1.1 400 Bad Request\r\n\r\n",
                        b"\x13BitTorrent protocoX" + bytes(48),
                        b"\x14BitTorrent protocol!" + bytes(48),
                        b"\x00" * 68,
                        b"\xff" * 96,  # an MSE/PE key exchange's size
                    ]
                ),
            )
        )
        return Opening(kind, junk=junk, **common)
    return Opening(kind, **common)


def talks(shape: Shape) -> st.SearchStrategy[Talk]:
    """One connection's behaviour, of four kinds:

    * anything: any opening, then any messages (most break a rule soon);
    * a polite peer: a proper opening with the fast and extension bits, a
      legal first message, then only legal messages, floods and silences
      (the harm is within the rules), maybe never reading;
    * a polite peer that sends one wrong message somewhere;
    * a 'seeder': claims pieces, unchokes, and answers requests its own way.
    """
    answers = st.lists(st.sampled_from(ANSWERS), max_size=4).map(tuple)
    anything = st.builds(
        Talk,
        openings(),
        st.lists(actions(shape, messages(shape)), max_size=8).map(tuple),
        answers,
        st.booleans() | st.just(True),
        st.sampled_from(["linger", "close"]),
    )
    first = st.one_of(
        st.just(Msg("have-none", frame(15))),
        st.just(Msg("have-all", frame(14))),
        claims(shape, fast=True).map(lambda c: c[0]),
    )

    @st.composite
    def polite(draw: st.DrawFn) -> Talk:
        opening = draw(openings(reserved_bits(fast=True, ext=True), proper=True))
        script = (Send((draw(first),)),) + tuple(draw(st.lists(actions(shape, valid_messages(shape)), max_size=8)))
        read, then = draw(st.booleans() | st.just(True)), draw(st.sampled_from(["linger", "close"]))
        return Talk(opening, script, draw(answers), read, then)

    @st.composite
    def one_wrong(draw: st.DrawFn) -> Talk:
        """A polite peer that breaks one rule once, somewhere in its script: the wrong message
        arrives on a connection in full swing, where the engine acts on what it reads."""
        talk = draw(polite())
        wrong = Send(tuple(draw(st.lists(valid_messages(shape), max_size=1))) + (draw(invalid_messages(shape)),))
        script = list(talk.script)
        # Before the script falls silent or hangs up, or it would never be sent.
        last = next((i for i, a in enumerate(script) if isinstance(a, (Silence, Hangup))), len(script))
        script.insert(draw(st.integers(1, max(1, last))), wrong)
        return Talk(talk.opening, tuple(script), talk.answers, talk.read, talk.then)

    @st.composite
    def fake_seeder(draw: st.DrawFn) -> Talk:
        fast = draw(st.booleans())
        opening = draw(openings(reserved_bits(fast=fast), proper=True))
        more = draw(st.lists(actions(shape, messages(shape)), max_size=3))
        script = (Send(draw(claims(shape, fast=fast))), *more)
        return Talk(opening, script, tuple(draw(st.lists(st.sampled_from(ANSWERS), min_size=1, max_size=6))))

    return st.one_of(anything, polite(), one_wrong(), one_wrong(), fake_seeder(), fake_seeder())


def hostiles(shape: Shape) -> st.SearchStrategy[Hostile]:
    dial_times = st.sampled_from([0.0, 0.5, LEECH_JOIN, LEECH_JOIN + 0.001, LEECH_JOIN + 0.1, 2.0]) | st.floats(
        0.0, LAST_DIAL, allow_nan=False
    )
    dials = st.builds(Dial, st.sampled_from(["seed", "leech"]), dial_times, talks(shape))
    return st.builds(
        Hostile,
        st.sampled_from([0.0, 0.01, 0.05, 0.2]),
        st.sampled_from([("leech",), ("leech",), ("seed",), ("leech", "seed"), ()]),
        talks(shape),
        st.lists(dials, max_size=2).map(tuple),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    shape = Shape(draw(st.sampled_from(SIZES)))
    seed = draw(st.integers(0, 1 << 32))
    return Scenario(shape.size, seed, tuple(draw(st.lists(hostiles(shape), min_size=1, max_size=3))))


# -- running hostile peers -----------------------------------------------------------------------

# What ends a hostile connection normally: the engine hung up, reset, or timed us out.
GONE = (ConnectionError, OSError, asyncio.IncompleteReadError, TimeoutError, EOFError)


class Hostiles:
    """Runs a scenario's hostile peers inside a :class:`SwarmSim` run (as its monitor)."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.shape = Shape(scenario.size)
        self.meta, self.payload = torrent(scenario.size)
        self.harness_errors: list[BaseException] = []  # our own bugs, reported by the test
        self.connections = 0
        self.requests_answered = 0
        self.sim: SwarmSim | None = None

    async def run(self, sim: SwarmSim) -> None:
        assert sim.net is not None
        self.sim = sim
        async with asyncio.TaskGroup() as tg:
            for k, h in enumerate(self.scenario.hostiles):
                host = sim.net.add_host(f"10.66.0.{k + 1}", up=HOSTILE_LINK, down=HOSTILE_LINK, latency=h.latency)
                await host.listen(functools.partial(self._incoming, h.incoming), host.ip, PORT)
                for name in h.known_by:
                    tg.create_task(self._tell(name, host.ip))
                for d in h.dials:
                    tg.create_task(self._guard(self._dial(host, d)))

    async def _joined(self, name: str) -> None:
        assert self.sim is not None
        while name not in self.sim.peers:
            await asyncio.sleep(0.01)

    async def _tell(self, name: str, ip: str) -> None:
        assert self.sim is not None
        await self._joined(name)
        self.sim.peers[name].torrent.add_peer(ip, PORT)

    async def _guard(self, coro: Awaitable[None]) -> None:
        try:
            await coro
        except GONE:
            pass
        except Exception as exc:  # a bug of the harness: the test reports it
            self.harness_errors.append(exc)

    async def _dial(self, host: SimHost, d: Dial) -> None:
        assert self.sim is not None
        await self._joined(d.target)
        await asyncio.sleep(max(0.0, d.at - self.sim.now()))
        target = self.sim.peers[d.target]
        reader, writer = await host.connect(target.host.ip, PORT)
        await self._converse(d.talk, reader, writer, dialled=False)

    async def _incoming(self, talk: Talk, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._guard(self._converse(talk, reader, writer, dialled=True))
        except asyncio.CancelledError:
            # The run is over.  Ending normally: on Python 3.11 a cancelled
            # connection handler makes asyncio log an error, which would pass
            # for the engine's.
            pass

    def _opening_bytes(self, o: Opening) -> bytes:
        assert self.sim is not None
        if o.kind == "junk":
            return o.junk
        if o.kind == "none":
            return b""
        peer_id = filler(o.id_seed, 20)
        if o.peer_id in self.sim.peers:
            peer_id = self.sim.peers[o.peer_id].session.peer_id
        info_hash = self.meta.info_hash if o.kind != "wrong-hash" else filler(o.id_seed + 1, 20)
        proper = PROTOCOL + o.reserved + info_hash + peer_id
        return proper[: o.cut] if o.kind == "truncated" else proper

    async def _converse(
        self, talk: Talk, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, dialled: bool
    ) -> None:
        self.connections += 1
        theirs = asyncio.Event()  # their handshake has arrived
        ended = asyncio.Event()  # they hung up
        reading = None
        if talk.read:
            reading = asyncio.create_task(self._read(talk, reader, writer, theirs, ended))
        try:
            if dialled and talk.opening.wait and reading is not None:
                async with asyncio.timeout(15.0):
                    await theirs.wait()
            writer.write(self._opening_bytes(talk.opening))
            for action in talk.script:
                if ended.is_set():
                    return
                if not await self._act(action, reader, writer, ended):
                    return
            if talk.then == "linger":
                await self._wait_end(ended)
        finally:
            if reading is not None:
                reading.cancel()
                outcome = await asyncio.gather(reading, return_exceptions=True)
                if isinstance(outcome[0], Exception) and not isinstance(outcome[0], GONE):
                    self.harness_errors.append(outcome[0])
            writer.close()

    async def _wait_end(self, ended: asyncio.Event) -> None:
        # Without a reader we cannot see the end: stay until the run ends.
        async with asyncio.timeout(3600.0):
            await ended.wait()

    async def _act(
        self, action: Action, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ended: asyncio.Event
    ) -> bool:
        """Do one scripted action; False once the connection is over."""
        if isinstance(action, Send):
            data = action.data
            bounds = (0, *action.cuts, len(data))
            for start, end in itertools.pairwise(bounds):
                writer.write(data[start:end])
                await writer.drain()
                if action.gap:
                    await asyncio.sleep(action.gap)
        elif isinstance(action, Pause):
            await asyncio.sleep(action.seconds)
        elif isinstance(action, Flood):
            left = action.count
            while left > 0:
                n = min(left, 1000)
                writer.write(action.unit.data * n)
                left -= n
                await writer.drain()
        elif isinstance(action, Hangup):
            writer.write(action.partial.data)
            if action.abort:
                writer.transport.abort()
            else:
                writer.close()
            return False
        elif isinstance(action, Silence):
            await self._wait_end(ended)
            return False
        return not writer.is_closing()

    async def _read(
        self,
        talk: Talk,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        theirs: asyncio.Event,
        ended: asyncio.Event,
    ) -> None:
        """Read what the engine sends: its handshake, then messages; answer its requests."""
        answers = itertools.cycle(talk.answers) if talk.answers else None
        buf = bytearray()
        handshake_left = HANDSHAKE_LENGTH
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    return
                buf += data
                if handshake_left:
                    n = min(handshake_left, len(buf))
                    del buf[:n]
                    handshake_left -= n
                    if handshake_left:
                        continue
                    theirs.set()
                while len(buf) >= 4:
                    (length,) = struct.unpack_from(">I", buf)
                    if len(buf) < 4 + length:
                        break
                    body = bytes(buf[4 : 4 + length])
                    del buf[: 4 + length]
                    if answers is not None and length == 13 and body[0] == 6:
                        self._answer(next(answers), *struct.unpack(">III", body[1:]), writer)
        except GONE:
            return
        finally:
            ended.set()
            theirs.set()

    def _answer(self, how: str, index: int, begin: int, length: int, writer: asyncio.StreamWriter) -> None:
        start = index * PIECE + begin
        right = self.payload[start : start + length]
        self.requests_answered += 1

        def piece(i: int, b: int, block: bytes) -> None:
            writer.write(frame(7, struct.pack(">II", i, b) + block))

        if how == "honest":
            piece(index, begin, right)
        elif how == "twice":
            piece(index, begin, right)
            piece(index, begin, right)
        elif how == "corrupt":
            piece(index, begin, bytes([right[0] ^ 0xFF]) + right[1:])
        elif how == "random":
            piece(index, begin, filler(start, length))
        elif how == "short":
            piece(index, begin, right[:-1])
        elif how == "long":
            piece(index, begin, right + b"\x00")
        elif how == "shifted":
            piece(index, begin + 1, right)
        elif how == "other-block":
            other = (index + 1) % self.shape.num_pieces
            piece(other, 0, self.payload[other * PIECE : other * PIECE + BLOCK_SIZE])
        elif how == "reject":
            writer.write(frame(16, struct.pack(">III", index, begin, length)))
        # "ignore": nothing


# -- the property ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    sim: SwarmSim
    hostiles: Hostiles
    stalled: SimulationStalled | None = None
    known: KnownBugWatch = field(default_factory=lambda: KnownBugWatch())


def run_scenario(scenario: Scenario, *, until: float = UNTIL) -> Outcome:
    meta, payload = torrent(scenario.size)
    hostiles = Hostiles(scenario)
    known = KnownBugWatch()
    holder: list[SwarmSim] = []

    async def main() -> None:
        sim = SwarmSim(meta, payload, seed=scenario.seed)
        holder.append(sim)
        specs = [
            PeerSpec("seed", up=SEED_UP, down=HONEST_DOWN, seed=True),
            PeerSpec("leech", up=LEECH_UP, down=HONEST_DOWN, join_at=LEECH_JOIN, knows=("seed",)),
        ]
        await sim.run(specs, until=until, monitors=[hostiles.run, known.run])

    try:
        run_virtual(main(), seed=scenario.seed)
    except SimulationStalled as exc:
        return Outcome(holder[0], hostiles, exc, known)
    return Outcome(holder[0], hostiles, None, known)


def link(sim: SwarmSim, at: str, to: str) -> Peer | None:
    """``at``'s connection to ``to`` (honest peers, by name), if it has one."""
    if at not in sim.peers or to not in sim.peers:
        return None
    ip = sim.peers[to].host.ip
    return next((p for a, p in sim.peers[at].torrent.peers.items() if a[0] == ip), None)


class KnownBugWatch:
    """Watches the two honest peers' connection for bugs D1 and D2 at work, four times a second.

    Both honest peers keep the rules: the leecher reads everything, the seeder
    rejects only what a choke cancels.  So the seeder taking the leecher for a
    stalled reader is D1 (and a choke that follows it, until the next unchoke,
    holds the leecher back), and the leecher in back-off from the seeder is D2.
    ``held_back`` sums the seconds either held the leecher back.
    """

    PERIOD = 0.25

    def __init__(self) -> None:
        self.traces: set[str] = set()
        self.held_back = 0.0

    async def run(self, sim: SwarmSim) -> None:
        was_stalled = was_choking = False
        d1_choke = False
        while True:
            await asyncio.sleep(self.PERIOD)
            to_leech, to_seed = link(sim, "seed", "leech"), link(sim, "leech", "seed")
            held = False
            if to_leech is not None:
                stalled, choking = to_leech.conduct.upload_stalled, to_leech.am_choking
                if stalled:
                    self.traces.add("D1")
                if choking and not was_choking and was_stalled:
                    d1_choke = True
                elif not choking:
                    d1_choke = False
                held = d1_choke and to_leech.peer_interested
                was_stalled, was_choking = stalled, choking
            if to_seed is not None and to_seed.conduct.backoff_until > sim.now():
                self.traces.add("D2")
                held = True
            if held:
                self.held_back += self.PERIOD


def engine_trouble(records: list[logging.LogRecord]) -> list[str]:
    """Log records that mean the engine hit an error of its own, or lost a task's exception."""
    bad = []
    for r in records:
        ours = r.name == "pyowtorrent" or r.name.startswith("pyowtorrent.")
        lost_task = r.name == "asyncio" and r.levelno >= logging.ERROR
        if (ours and (r.levelno >= logging.ERROR or r.exc_info)) or lost_task:
            bad.append(f"{r.name} {r.levelname}: {r.getMessage()}" + (f" [{r.exc_info[1]!r}]" if r.exc_info else ""))
    return bad


def bound(outcome: Outcome) -> float:
    """The example's bound on the leecher's download time (see SLACK)."""
    return outcome.sim.peers["seed"].torrent.uploaded_bytes / SEED_UP + SLACK


def check(outcome: Outcome, records: list[logging.LogRecord], *, set_aside: bool = True) -> None:
    """Every example's checks (see the module docstring); ``set_aside``: a known bug may excuse
    a late or missing completion (the fuzz test's examples; never a fixed scenario's)."""
    sim, hostiles = outcome.sim, outcome.hostiles
    assert outcome.stalled is None, f"the simulation stalled: {outcome.stalled}"
    assert not hostiles.harness_errors, f"the harness itself failed: {hostiles.harness_errors!r}"
    trouble = engine_trouble(records)
    assert not trouble, "the engine logged errors:\n" + "\n".join(trouble)
    for name in ("seed", "leech"):
        peer = sim.peers[name]
        failed = [e for e in peer.events if isinstance(e, TorrentFailed)]
        errored = [e for e in peer.events if isinstance(e, StateChanged) and e.state is TorrentState.ERROR]
        assert not failed and not errored and peer.torrent.state is not TorrentState.ERROR, (
            f"{name} went to error: {peer.torrent.error}"
        )
    leech = sim.peers["leech"]
    limit = bound(outcome)
    took = None if leech.completed_at is None else leech.completed_at - leech.joined_at
    if leech.completed_at is not None:
        assert sim.byte_exact(leech), "the leecher completed with wrong bytes"
    if took is not None and took <= limit:
        return
    if set_aside and not STRICT:
        if took is None and failing_for_ever(outcome):
            event("set aside: known engine bug C kept the leecher from completing")
            return
    assert took is not None, (
        f"the leecher did not complete in {UNTIL - LEECH_JOIN:.0f} s (bound {limit:.1f} s): it has "
        f"{leech.torrent.picker.num_have()} of {sim.meta.num_pieces} pieces"
    )
    assert took <= limit, (
        f"the leecher took {took:.1f} s (bound {limit:.1f} s; known bugs held it back {outcome.known.held_back:.1f} s)"
    )


def failing_for_ever(outcome: Outcome) -> bool:
    """C's trace: the leecher lacks pieces, and each of them failed its hash LIVELOCK_FAILURES times."""
    leech = outcome.sim.peers["leech"]
    failures: dict[int, int] = {}
    for e in leech.events:
        if isinstance(e, PieceFailed):
            failures[e.piece] = failures.get(e.piece, 0) + 1
    missing = [i for i in range(outcome.sim.meta.num_pieces) if not leech.torrent.have_piece(i)]
    return bool(missing) and all(failures.get(i, 0) >= LIVELOCK_FAILURES for i in missing)


@pytest.fixture
def engine_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    # DEBUG for the engine: a traceback logged at any level counts.
    caplog.set_level(logging.DEBUG, logger="pyowtorrent")
    caplog.set_level(logging.WARNING, logger="asyncio")
    return caplog


# caplog is function-scoped, so hypothesis would warn that it is not reset
# between examples: each example clears it first and reads only its own records.
# A failing example's repr abbreviates the bytes of each message (Msg shows what
# it is); print_blob prints the @reproduce_failure line that replays it exactly.
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(scenario=scenarios())
def test_a_good_leecher_completes_whatever_hostile_peers_send(
    scenario: Scenario, engine_logs: pytest.LogCaptureFixture
) -> None:
    """One seeder, one leecher, 1-3 hostile peers doing what hypothesis draws (see the module)."""
    engine_logs.clear()
    outcome = run_scenario(scenario)
    check(outcome, engine_logs.records)
    describe(outcome)


def describe(outcome: Outcome) -> None:
    """What happened before the leecher completed, for ``--hypothesis-show-statistics``: does the
    fuzzer reach the engine's rules?  (No ``target`` on the download time: in trials it made
    hypothesis mutate one slow example over and over, and find fewer kinds of trouble.)"""
    sim = outcome.sim
    leech = sim.peers["leech"]
    if leech.completed_at is None:
        return  # a known bug's trace (check() let it pass)
    took = leech.completed_at - leech.joined_at
    event(f"leecher done in {'<10' if took < 10 else '10-20' if took < 20 else '20-40' if took < 40 else '>=40'} s")
    for name in ("seed", "leech"):
        for e in sim.peers[name].events:
            if e.at > leech.completed_at:
                break
            if isinstance(e, PeerDisconnected) and e.peer[0].startswith("10.66."):
                event(f"{name} dropped a hostile peer: {_reason(e.reason)}")
            elif isinstance(e, PeerBanned):
                event(f"{name} banned a hostile peer")
            elif isinstance(e, PieceFailed):
                event(f"{name} had a piece fail its hash")
    if outcome.hostiles.requests_answered:
        event("a hostile peer answered requests")
    for bug in sorted(outcome.known.traces):
        event(f"trace of known engine bug {bug} (within the bound)")


def _reason(reason: str) -> str:
    """A disconnect reason without its particulars (indices, lengths, addresses)."""
    head = reason.split(":")[0] if not reason.startswith("protocol violation") else ":".join(reason.split(":")[:2])
    return "".join(c for c in head if not c.isdigit()).strip()


# -- the harness catches what it should ---------------------------------------------------------------


def test_the_harness_sees_hostile_peers_connect_and_get_answers(engine_logs: pytest.LogCaptureFixture) -> None:
    """A fixed scenario: a lying 'seeder' the leecher dials, and a dialler that floods keep-alives;
    the leecher still completes, the liar is banned, and both hostile peers were talked to."""
    shape = Shape(SIZES[1])
    proper = Opening("proper", reserved=bytes([0, 0, 0, 0, 0, 0x10, 0, 0x04]), id_seed=1)
    liar = Hostile(
        latency=0.01,
        known_by=("leech",),
        incoming=Talk(proper, (Send((Msg("have-all", frame(14)), Msg("unchoke", frame(1)))),), ("corrupt",)),
        dials=(),
    )
    keep_alive = Msg("keep-alive", bytes(4))
    flooder = Hostile(
        latency=0.0,
        known_by=(),
        incoming=Talk(Opening("none"), ()),
        dials=(Dial("leech", LEECH_JOIN + 0.5, Talk(Opening("proper", id_seed=2), (Flood(keep_alive, 2000),))),),
    )
    outcome = run_scenario(Scenario(shape.size, 5, (liar, flooder)))
    check(outcome, engine_logs.records, set_aside=False)
    assert outcome.hostiles.connections >= 2
    assert outcome.hostiles.requests_answered > 0
    banned = [e for e in outcome.sim.peers["leech"].events if isinstance(e, PeerBanned)]
    assert [e.ip for e in banned] == ["10.66.0.1"]


# -- engine bugs the fuzzer found ------------------------------------------------------------------
#
# A and B: found on 5ceed08, fixed by 63e64fb; kept as regression tests (each fails on 5ceed08).
# D1 and D2: fixed (Conduct counts bytes that left the send buffer; rejects that come with a
# choke are no refusal, and an unchoke ends a back-off); kept as regression tests.
# C: still there, pinned by a strict xfail.


def _one_attack_on_the_seeder(payload: bytes, caplog: pytest.LogCaptureFixture) -> tuple[SwarmSim, list[str]]:
    """The seeder and the leecher of 1 MiB; a peer that dials the seeder without the fast
    extension and writes ``payload`` after its handshake, in one write.  Returns the run and
    the engine's log records with a traceback."""
    meta, data = torrent(SIZES[0])

    async def attack(sim: SwarmSim) -> None:
        assert sim.net is not None
        while "seed" not in sim.peers:
            await asyncio.sleep(0.01)
        host = sim.net.add_host("10.66.0.1", up=HOSTILE_LINK, down=HOSTILE_LINK)
        a = Attacker(meta, host.network, fast=False)
        await a.connect((sim.peers["seed"].host.ip, PORT))
        a.send_raw(payload)
        await a.read_until_closed()

    async def main() -> SwarmSim:
        sim = SwarmSim(meta, data, seed=1)
        specs = [
            PeerSpec("seed", up=SEED_UP, down=HONEST_DOWN, seed=True),
            PeerSpec("leech", up=LEECH_UP, down=HONEST_DOWN, join_at=LEECH_JOIN, knows=("seed",)),
        ]
        await sim.run(specs, until=UNTIL, monitors=[attack])
        return sim

    caplog.set_level(logging.DEBUG, logger="pyowtorrent")
    sim = run_virtual(main(), seed=1)
    errors = [f"{r.name}: {r.getMessage()} [{r.exc_info[1]!r}]" for r in caplog.records if r.exc_info]
    return sim, errors


@pytest.mark.parametrize(
    "payload, reason",
    [
        # A (failed on 5ceed08): the events decoded before a violation were handled where
        # nothing caught what they raised, so the 501st keep-alive's PeerMisbehaved escaped
        # Peer.run and PeerSet logged the peer task as failed, at ERROR with a traceback.
        (bytes(4) * 501 + frame(13, struct.pack(">I", 0)), "protocol violation: fast extension not negotiated"),
        (bytes(4) * 501, "flooding us with keep-alive messages"),
        (bytes(4) * 500 + frame(13, struct.pack(">I", 0)), "protocol violation: fast extension not negotiated"),
    ],
    ids=["flood-then-violation", "flood", "violation"],
)
def test_a_flood_or_a_violation_drops_the_peer_without_an_engine_error(
    payload: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """501 keep-alives (the allowance is 500) and/or a suggest (fast extension not negotiated),
    in one write: the seeder drops the peer with a reason, and nothing logs a traceback."""
    sim, errors = _one_attack_on_the_seeder(payload, caplog)
    assert not errors, errors
    gone = [e for e in sim.peers["seed"].events if isinstance(e, PeerDisconnected) and e.peer[0] == "10.66.0.1"]
    assert len(gone) == 1 and gone[0].reason.startswith(reason), gone
    check_complete(sim)


def check_complete(sim: SwarmSim) -> None:
    leech = sim.peers["leech"]
    assert leech.completed_at is not None and sim.byte_exact(leech)


def impostor(whose: str) -> Scenario:
    """B (failed on 5ceed08): a hostile peer presents ``whose`` peer id, then says nothing more.

    ``seed``: the leecher knows its address (as from a tracker) and dials it as
    it joins; it answers sooner than the seeder (its link has no latency), with
    the seeder's peer id.  ``leech``: it dials the seeder as the leecher joins,
    with the leecher's peer id (learnt when the leecher dials it, or from a
    tracker's non-compact answer).  On 5ceed08 the engine refused any second
    connection with a peer id already connected, from whatever address, so the
    leecher and the seeder never connected and the leecher never completed.
    """
    silent = (Silence(),)
    if whose == "seed":
        h = Hostile(0.0, ("leech",), Talk(Opening("proper", peer_id="seed", wait=True), silent), ())
    else:
        dial = Dial("seed", LEECH_JOIN, Talk(Opening("proper", peer_id="leech"), silent))
        h = Hostile(0.0, (), Talk(Opening("none"), ()), (dial,))
    return Scenario(SIZES[0], 1, (h,))


@pytest.mark.parametrize("whose", ["seed", "leech"])
def test_a_peer_presenting_anothers_peer_id_does_not_lock_the_leecher_out(
    whose: str, engine_logs: pytest.LogCaptureFixture
) -> None:
    check(run_scenario(impostor(whose)), engine_logs.records, set_aside=False)


def partial_liar(answers: tuple[str, ...]) -> Scenario:
    """A peer that dials the leecher as it joins, says it has piece 5 only, unchokes it, and
    answers its requests in turn as ``answers`` says; the honest seeder has everything."""
    shape = Shape(SIZES[0])
    bits = bytearray(shape.bitfield_length)
    bits[0] = 0x80 >> 5
    claim = Send((Msg("bitfield([5])", frame(5, bytes(bits))), Msg("unchoke", frame(1))))
    talk = Talk(Opening("proper", id_seed=7), (claim,), answers)
    return Scenario(shape.size, 0, (Hostile(0.0, (), Talk(Opening("none"), ()), (Dial("leech", LEECH_JOIN, talk),)),))


@pytest.mark.parametrize("answers", [("corrupt",), ("corrupt", "honest")])
def test_a_peer_corrupting_every_block_it_sends_is_banned(
    answers: tuple[str, ...], engine_logs: pytest.LogCaptureFixture
) -> None:
    """The sole sender of a bad piece, twice: banned (smart ban's sole-sender rule), and the leecher completes."""
    outcome = run_scenario(partial_liar(answers))
    check(outcome, engine_logs.records, set_aside=False)
    assert [e.ip for e in outcome.sim.peers["leech"].events if isinstance(e, PeerBanned)] == ["10.66.0.1"]


@pytest.mark.xfail(
    strict=True,
    reason=(
        "engine bug C: a peer that answers some requests for a piece with corrupt blocks and never answers the "
        "others (the end-game gets those from the honest seeder) makes the piece fail its hash for ever "
        "(some 190 times in 93 s here, about every 0.47 s) and is never banned: smart ban convicts only the "
        "sole sender of a failed piece or, once the piece passes, the senders of blocks that differ; with two senders "
        "every time the piece never passes, and after each failure the same peer is asked for the same "
        "blocks again"
    ),
)
@pytest.mark.parametrize("answers", [("corrupt", "ignore"), ("ignore", "corrupt")])
def test_a_peer_corrupting_some_blocks_and_leaving_the_rest_unanswered_is_found_out(answers: tuple[str, ...]) -> None:
    outcome = run_scenario(partial_liar(answers))
    leech = outcome.sim.peers["leech"]
    assert leech.completed_at is not None, (
        f"{sum(isinstance(e, PieceFailed) for e in leech.events)} hash failures, "
        f"{sum(isinstance(e, PeerBanned) for e in leech.events)} bans"
    )
    assert any(isinstance(e, PeerBanned) for e in leech.events)
    check(outcome, [], set_aside=False)


def two_half_honest_liars() -> Scenario:
    """Found by 1500 fuzz examples against a trust-point rule (since reverted): two peers with every
    piece, each answering some requests honestly and some wrongly, beside the honest seeder (and a
    third hostile that offers nothing).  The seeder sends most blocks, so it takes part in more failed
    pieces than either liar: a rule that convicts on failures taken part in banned it, and the leecher
    got nothing."""
    shape = Shape(SIZES[0])
    full = Send((Msg("bitfield(full)", frame(5, shape.full_bitfield())), Msg("unchoke", frame(1))))
    keep_alive = Msg("keep-alive", bytes(4))
    idle = Talk(
        Opening("proper", reserved=bytes([0, 0, 0, 0, 0, 0x10, 0, 0x04]), id_seed=687461, wait=True),
        (Send((Msg("have-none", frame(15)),)), Send((keep_alive,)), Pause(0.0), Send((keep_alive, keep_alive)), Send((keep_alive,))),
        ("honest",) * 4,
        read=False,
    )
    answering = Talk(Opening("proper", wait=False), (full,), ("honest", "other-block", "corrupt"))
    dialling = Talk(Opening("proper", id_seed=100000001, wait=False), (full,), ("honest", "random", "ignore"))
    return Scenario(
        shape.size,
        2834,
        (
            Hostile(0.0, ("leech",), idle, ()),
            Hostile(0.0, ("leech",), answering, ()),
            Hostile(0.0, ("leech",), Talk(Opening("proper", wait=False), ()), (Dial("leech", 0.0, dialling),)),
        ),
    )


def test_two_half_honest_liars_do_not_get_the_honest_seeder_banned(engine_logs: pytest.LogCaptureFixture) -> None:
    outcome = run_scenario(two_half_honest_liars())
    check(outcome, engine_logs.records, set_aside=False)
    seed_ip = outcome.sim.peers["seed"].host.ip
    assert seed_ip not in {e.ip for e in outcome.sim.peers["leech"].events if isinstance(e, PeerBanned)}


def lone_pair(size: int, rate: float, monitors: tuple[Callable[[SwarmSim], object], ...] = ()) -> SwarmSim:
    """A seeder and one leecher, no hostile peer: both links ``rate`` bytes/s up, 20 MB/s down."""
    payload = make_payload(size, seed=1)
    meta = metainfo_for_bytes("dataset.zip", payload, PIECE)

    async def main() -> SwarmSim:
        sim = SwarmSim(meta, payload, seed=1)
        specs = [
            PeerSpec("seed", up=rate, down=20e6, seed=True),
            PeerSpec("leech", up=rate, down=20e6, join_at=1.0, knows=("seed",)),
        ]
        await sim.run(specs, until=600.0, monitors=monitors)  # type: ignore[arg-type]
        return sim

    return run_virtual(main(), seed=1)


def test_a_leecher_reading_at_its_links_rate_is_never_taken_for_a_stalled_reader() -> None:
    flagged: list[float] = []

    async def watch(sim: SwarmSim) -> None:
        while True:
            await asyncio.sleep(0.25)
            p = link(sim, "seed", "leech")
            if p is not None and p.conduct.upload_stalled:
                flagged.append(sim.now())

    sim = lone_pair(8 * MiB, 250_000, (watch,))
    check_complete(sim)
    assert not flagged, f"the seeder took its only leecher for a stalled reader at t = {flagged[0]:.2f} s"


def test_a_leecher_choked_for_a_moment_asks_again_once_unchoked() -> None:
    size, rate = 32 * MiB, 2_000_000
    backoff_after_unchoke: list[float] = []

    async def choke_once(sim: SwarmSim) -> None:
        while link(sim, "seed", "leech") is None:
            await asyncio.sleep(0.1)
        await asyncio.sleep(3.0)
        to_leech = link(sim, "seed", "leech")
        assert to_leech is not None
        to_leech.set_choking(True)  # as a rechoke would, for half a second
        await asyncio.sleep(0.5)
        to_leech.set_choking(False)
        await asyncio.sleep(1.0)
        to_seed = link(sim, "leech", "seed")
        assert to_seed is not None
        backoff_after_unchoke.append(max(0.0, to_seed.conduct.backoff_until - sim.now()))

    sim = lone_pair(size, rate, (choke_once,))
    check_complete(sim)
    leech = sim.peers["leech"]
    assert leech.completed_at is not None
    took, ideal = leech.completed_at - leech.joined_at, size / rate
    assert backoff_after_unchoke == [0.0], (
        f"1 s after the unchoke the leecher still waits {backoff_after_unchoke[0]:.1f} s"
    )
    assert took <= ideal + 3.0, f"{took:.1f} s for {ideal:.1f} s of transfer"


def test_a_lone_leecher_downloads_at_the_seeders_upload_rate() -> None:
    size, rate = 8 * MiB, 250_000
    sim = lone_pair(size, rate)
    check_complete(sim)
    leech = sim.peers["leech"]
    assert leech.completed_at is not None
    took, ideal = leech.completed_at - leech.joined_at, size / rate
    assert took <= 1.1 * ideal + 2.0, f"{took:.1f} s for {ideal:.1f} s of transfer"
