"""Message stream encryption, sans I/O: both sides of the handshake, its bounds, and a fuzz of the parsers.

The two sides talk to each other over a simulated pipe cut at random; a
reference written here from the spec's byte layout (hashlib and RC4, a few
lines each) plays the other side where a test needs to send what our own
side never would (a wrong VC, a long pad, an unknown crypto_select).
Randomness is a seeded ``random.Random``, so every run is the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import struct
import subprocess
import sys
from dataclasses import dataclass

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyowtorrent.engine.crypto_stream import CipherReader, secure_stream
from pyowtorrent.wire import LocalProtocolError, RemoteProtocolError
from pyowtorrent.wire.handshake import PROTOCOL
from pyowtorrent.wire.mse import (
    KEY_LENGTH,
    MAX_PAD,
    CryptoMethod,
    EncryptionError,
    Initiator,
    MseFailure,
    MseResult,
    P,
    Receiver,
    is_plaintext_opening,
    rc4_available,
    skey_hash,
)

INFO_HASH = bytes(range(20))
OTHER_HASH = bytes(range(1, 21))
HANDSHAKE = PROTOCOL + bytes(8) + INFO_HASH + b"-PY0100-abcdefghijkl"
BOTH = CryptoMethod.PLAINTEXT | CryptoMethod.RC4
METHODS = [CryptoMethod.PLAINTEXT, CryptoMethod.RC4, BOTH]
# The most a receiver takes before the handshake must be over: Ya, the longest
# PadA, the marker, the stream key hash, VC, crypto_provide, len(PadC), the
# longest PadC, len(IA) and the longest IA.
RECEIVER_BOUND = KEY_LENGTH + MAX_PAD + 20 + 20 + 8 + 4 + 2 + MAX_PAD + 2 + 0xFFFF


def rng(seed: int) -> random.Random:
    return random.Random(seed)


def finder(*hashes: bytes) -> dict[bytes, bytes]:
    return {skey_hash(h): h for h in hashes}


def initiator(seed: int = 1, provide: CryptoMethod = BOTH, ia: bytes = HANDSHAKE) -> Initiator:
    return Initiator(INFO_HASH, ia, rng(seed).randbytes, provide)


def receiver(seed: int = 2, allowed: CryptoMethod = BOTH) -> Receiver:
    return Receiver(finder(INFO_HASH, OTHER_HASH).get, rng(seed).randbytes, allowed)


def exchange(a: Initiator, b: Receiver, cuts: list[int], b_tail: bytes = b"") -> None:
    """Run both sides over a pipe each way, delivering chunks of the sizes in ``cuts`` (cycled).

    ``b_tail`` is sent by B right after its last handshake bytes, in the same write.
    """
    sizes = [c for c in cuts if c > 0] or [1 << 20]
    turn = 0
    to_b, to_a = bytearray(a.first_bytes()), bytearray()
    while a.result is None or b.result is None:
        moved = False
        for pipe, side, back in ((to_b, b, to_a), (to_a, a, to_b)):
            if not pipe or side.result is not None:
                continue
            n = sizes[turn % len(sizes)]
            turn += 1
            chunk = bytes(pipe[:n])
            del pipe[:n]
            back += side.receive_data(chunk)
            if side is b and b.result is not None:
                back += b_tail
            moved = True
        assert moved, "the handshake stalled"
    assert not to_b, "the receiver finished with bytes of the handshake unread"


def lowest(bits: int) -> CryptoMethod:
    return CryptoMethod(bits & -bits)


# ---------------------------------------------------------------------------
# Both sides against each other


@settings(max_examples=120, deadline=None)
@given(
    st.sampled_from(METHODS),
    st.sampled_from(METHODS),
    st.lists(st.integers(1, 700), min_size=1, max_size=12),
    st.integers(0, 2**32),
    st.binary(max_size=300),
)
def test_both_sides_agree_over_any_split_of_the_stream(
    provide: CryptoMethod, allowed: CryptoMethod, cuts: list[int], seed: int, tail: bytes
) -> None:
    a = initiator(seed, provide)
    b = receiver(seed + 1, allowed)
    if not provide & allowed:
        with pytest.raises(EncryptionError) as info:
            exchange(a, b, cuts)
        assert info.value.failure is MseFailure.NO_COMMON_METHOD
        return
    exchange(a, b, cuts)
    assert a.result is not None and b.result is not None
    method = lowest(int(provide & allowed))  # plaintext whenever both take it, as libtorrent
    assert a.result.method is method and b.result.method is method
    assert a.result.skey == b.result.skey == INFO_HASH
    # The initial payload (our BitTorrent handshake) arrives in the clear at B, whatever was chosen.
    assert b.result.payload == HANDSHAKE
    check_stream(a.result, b.result, method, tail)


def check_stream(ra: MseResult, rb: MseResult, method: CryptoMethod, data: bytes) -> None:
    """What each side's stream cipher makes of the other's bytes is what was sent, both ways."""
    if method is CryptoMethod.PLAINTEXT:
        assert ra.encrypt is ra.decrypt is rb.encrypt is rb.decrypt is None
        return
    assert ra.encrypt and ra.decrypt and rb.encrypt and rb.decrypt
    for sender, to in ((ra, rb), (rb, ra)):
        assert sender.encrypt and to.decrypt
        wire = sender.encrypt.update(data)
        if len(data) >= 8:
            assert wire != data
        assert to.decrypt.update(wire) == data


def test_the_tail_of_the_receivers_last_write_reaches_the_initiator_deciphered() -> None:
    for allowed in (CryptoMethod.PLAINTEXT, CryptoMethod.RC4):
        # First run: learn what B's stream cipher makes of the tail (the machines are deterministic).
        probe_a, probe_b = initiator(5), receiver(6, allowed)
        exchange(probe_a, probe_b, [10_000])
        assert probe_b.result is not None
        tail = b"\x00\x00\x00\x01\x01 and more"
        wire = probe_b.result.encrypt.update(tail) if probe_b.result.encrypt else tail
        a, b = initiator(5), receiver(6, allowed)
        exchange(a, b, [7, 300, 1], b_tail=wire)
        assert a.result is not None and a.result.payload == tail


def test_the_receiver_deciphers_bytes_read_past_the_initial_payload() -> None:
    """A driver that reads more than ``wanted`` gives the handshake the stream's first bytes: they
    come out in ``payload``, after the initial payload, deciphered as the method says."""
    for allowed in (CryptoMethod.PLAINTEXT, CryptoMethod.RC4):
        a, b = initiator(7), receiver(8, allowed)
        step1 = a.first_bytes()
        step2 = b.receive_data(step1)
        step3 = a.receive_data(step2)
        # What A sends next under the method B will choose, from a twin run (same seeds, same keys).
        twin_a, twin_b = initiator(7), receiver(8, allowed)
        exchange(twin_a, twin_b, [100_000])
        assert twin_a.result is not None
        after = b"\x00\x00\x00\x05\x04\x00\x00\x00\x07"
        wire = twin_a.result.encrypt.update(after) if twin_a.result.encrypt else after
        step4 = b.receive_data(step3 + wire)
        assert b.result is not None and b.result.payload == HANDSHAKE + after
        a.receive_data(step4)
        assert a.result is not None and a.result.method is b.result.method


def test_reading_exactly_what_is_wanted_never_reads_past_the_handshake() -> None:
    """The engine reads ``wanted`` bytes at a time (waiting until that many are there): the
    initiator ends its search for B's pad and its reply with nothing of B's stream taken, though
    B's stream follows in the same write, whatever the pads' lengths."""
    for seed in range(60):
        a, b = initiator(seed, BOTH), receiver(seed + 1000, CryptoMethod.RC4)
        to_b, to_a = bytearray(a.first_bytes()), bytearray()
        while a.result is None or b.result is None:
            moved = False
            for pipe, side, back in ((to_b, b, to_a), (to_a, a, to_b)):
                if side.result is None and 0 < side.wanted <= len(pipe):
                    n = side.wanted
                    chunk = bytes(pipe[:n])
                    del pipe[:n]
                    back += side.receive_data(chunk)
                    if side is b and b.result is not None:
                        back += b"STREAM"  # B's stream follows its handshake at once
                    moved = True
            assert moved, "a side waits for more than will ever come"
        assert a.result.payload == b"" and bytes(to_a) == b"STREAM"  # left for the next read
        assert b.result.payload == HANDSHAKE and not to_b


def test_a_key_exchange_costs_two_modular_powers_of_a_160_bit_exponent() -> None:
    a = initiator(1)
    assert len(a.public_key) == KEY_LENGTH
    assert 1 < int.from_bytes(a.public_key, "big") < P - 1
    assert a._private.bit_length() == 160  # the top bit is set: never a tiny private key
    # The spec's prime, 768 bits.
    assert P.bit_length() == 768 and P % 2 == 1
    assert hex(P).startswith("0xffffffffffffffffc90fdaa22168c234") and hex(P).endswith("90563")


def test_pads_are_of_every_length_up_to_512() -> None:
    lengths = {len(initiator(seed).first_bytes()) - KEY_LENGTH for seed in range(600)}
    assert min(lengths) >= 0 and max(lengths) <= MAX_PAD
    assert len(lengths) > 300  # spread over the range, not one length


# ---------------------------------------------------------------------------
# The other side written from the spec, to send what ours never would


def sha1(*parts: bytes) -> bytes:
    return hashlib.sha1(b"".join(parts)).digest()


def rc4(key: bytes) -> CipherContext:
    ctx = Cipher(ARC4(key), mode=None).encryptor()
    ctx.update(bytes(1024))
    return ctx


@dataclass
class RefKeys:
    """One side of the key exchange as the spec writes it."""

    x: int
    public: bytes

    @classmethod
    def make(cls, seed: int) -> RefKeys:
        x = rng(seed).getrandbits(160) | 1 << 159
        return cls(x, pow(2, x, P).to_bytes(96, "big"))

    def secret(self, theirs: bytes) -> bytes:
        return pow(int.from_bytes(theirs, "big"), self.x, P).to_bytes(96, "big")


def ref_step3(
    secret: bytes,
    skey: bytes = INFO_HASH,
    *,
    vc: bytes = bytes(8),
    provide: int = 3,
    pad_c: bytes = b"",
    pad_c_length: int | None = None,
    ia: bytes = HANDSHAKE,
) -> bytes:
    enc = rc4(sha1(b"keyA", secret, skey))
    body = vc + struct.pack(">IH", provide, len(pad_c) if pad_c_length is None else pad_c_length) + pad_c
    body += struct.pack(">H", len(ia)) + ia
    xored = bytes(x ^ y for x, y in zip(sha1(b"req2", skey), sha1(b"req3", secret)))
    return sha1(b"req1", secret) + xored + enc.update(body)


def ref_step4(secret: bytes, *, select: int, pad_d: bytes = b"", pad_d_length: int | None = None) -> bytes:
    enc = rc4(sha1(b"keyB", secret, INFO_HASH))
    length = len(pad_d) if pad_d_length is None else pad_d_length
    return enc.update(bytes(8) + struct.pack(">IH", select, length) + pad_d)


def start_receiver(pad_a: bytes = b"", allowed: CryptoMethod = BOTH) -> tuple[Receiver, bytes]:
    """A receiver that has our reference key and pad; returns it and the shared secret."""
    ref = RefKeys.make(99)
    b = receiver(3, allowed)
    reply = b.receive_data(ref.public + pad_a)
    assert KEY_LENGTH <= len(reply) <= KEY_LENGTH + MAX_PAD
    return b, ref.secret(reply[:KEY_LENGTH])


def start_initiator(provide: CryptoMethod = BOTH) -> tuple[Initiator, bytes, bytes]:
    """An initiator past step 3; returns it, the secret, and its step 3."""
    ref = RefKeys.make(98)
    a = initiator(4, provide)
    ya = a.first_bytes()[:KEY_LENGTH]
    step3 = a.receive_data(ref.public)
    return a, ref.secret(ya), step3


def test_our_initiator_writes_the_spec_layout() -> None:
    """Step 3 as the reference reads it: the markers, then VC, crypto_provide, PadC, IA under keyA."""
    a, secret, step3 = start_initiator(CryptoMethod.RC4)
    assert step3[:20] == sha1(b"req1", secret)
    assert bytes(x ^ y for x, y in zip(step3[20:40], sha1(b"req3", secret))) == sha1(b"req2", INFO_HASH)
    plain = rc4(sha1(b"keyA", secret, INFO_HASH)).update(step3[40:])
    vc, provide, pad_length = struct.unpack(">8sIH", plain[:14])
    assert vc == bytes(8) and provide == 2 and pad_length <= MAX_PAD
    (ia_length,) = struct.unpack(">H", plain[14 + pad_length : 16 + pad_length])
    assert plain[16 + pad_length :] == HANDSHAKE and ia_length == len(HANDSHAKE)
    # And it takes the reference's step 4 (with a pad and the stream's first bytes after it).
    step4 = ref_step4(secret, select=2, pad_d=b"\x07" * 33)
    assert a.receive_data(step4) == b""
    assert a.result is not None and a.result.method is CryptoMethod.RC4 and a.result.payload == b""


def test_our_receiver_reads_the_spec_layout_and_answers_in_it() -> None:
    b, secret = start_receiver(pad_a=b"\x01" * 200)
    step4 = b.receive_data(ref_step3(secret, provide=2, pad_c=b"\x02" * 77))
    assert b.result is not None and b.result.payload == HANDSHAKE and b.result.method is CryptoMethod.RC4
    plain = rc4(sha1(b"keyB", secret, INFO_HASH)).update(step4)
    vc, select, pad_length = struct.unpack(">8sIH", plain[:14])
    assert vc == bytes(8) and select == 2 and len(plain) == 14 + pad_length


def test_an_initial_payload_may_be_empty_or_partial() -> None:
    """libtorrent sends its whole handshake as IA; a client may send none or part of it, the rest after."""
    for ia in (b"", HANDSHAKE[:30]):
        b, secret = start_receiver()
        b.receive_data(ref_step3(secret, ia=ia))
        assert b.result is not None and b.result.payload == ia


@pytest.mark.parametrize("at", [0, 1, 300, MAX_PAD])
def test_the_receiver_finds_its_marker_after_any_pad_up_to_512(at: int) -> None:
    b, secret = start_receiver(pad_a=bytes(at))
    b.receive_data(ref_step3(secret))
    assert b.result is not None


@pytest.mark.parametrize("pad", [0, 1, MAX_PAD])
def test_the_initiator_finds_its_marker_after_any_pad_up_to_512(pad: int) -> None:
    ref = RefKeys.make(98)
    a = initiator(4)
    secret = ref.secret(a.first_bytes()[:KEY_LENGTH])
    a.receive_data(ref.public + b"\x09" * pad)
    a.receive_data(ref_step4(secret, select=1))
    assert a.result is not None and a.result.method is CryptoMethod.PLAINTEXT


# ---------------------------------------------------------------------------
# Bounds and broken rules: clean errors, no unbounded buffering


def failure(exc: pytest.ExceptionInfo[EncryptionError]) -> MseFailure:
    assert isinstance(exc.value, RemoteProtocolError)  # what ends a connection on any violation
    return exc.value.failure


def test_no_marker_within_the_longest_pad_fails_the_receiver_then_and_there() -> None:
    b, secret = start_receiver()
    step3 = ref_step3(secret)
    late = bytes(MAX_PAD + 1) + step3  # the marker one byte too late
    fed = 0
    with pytest.raises(EncryptionError) as info:
        for byte in late:  # one byte at a time: the machine must fail at the bound, not buffer on
            b.receive_data(bytes([byte]))
            fed += 1
            assert b.wanted >= 1
    assert failure(info) is MseFailure.NO_SYNC_MARKER
    assert fed <= MAX_PAD + 20
    assert b.wanted == 0
    with pytest.raises(LocalProtocolError):
        b.receive_data(b"x")  # a failed handshake takes nothing more


def test_no_marker_within_the_longest_pad_fails_the_initiator() -> None:
    a = initiator(4)
    a.first_bytes()
    a.receive_data(RefKeys.make(98).public)
    with pytest.raises(EncryptionError) as info:
        a.receive_data(bytes(MAX_PAD + 8))
    assert failure(info) is MseFailure.NO_SYNC_MARKER


def test_a_huge_read_without_the_marker_fails_at_once() -> None:
    b, _ = start_receiver()
    with pytest.raises(EncryptionError) as info:
        b.receive_data(bytes(10 << 20))
    assert failure(info) is MseFailure.NO_SYNC_MARKER


def test_a_wrong_verification_constant_is_refused() -> None:
    b, secret = start_receiver()
    with pytest.raises(EncryptionError) as info:
        b.receive_data(ref_step3(secret, vc=b"\x00" * 7 + b"\x01"))
    assert failure(info) is MseFailure.BAD_VC


def test_a_stream_key_of_no_torrent_of_ours_is_refused() -> None:
    b, secret = start_receiver()
    with pytest.raises(EncryptionError) as info:
        b.receive_data(ref_step3(secret, skey=bytes(20)))
    assert failure(info) is MseFailure.UNKNOWN_TORRENT


def test_the_other_torrent_of_ours_is_found_by_its_stream_key() -> None:
    b, secret = start_receiver()
    enc = ref_step3(secret, skey=OTHER_HASH)
    b.receive_data(enc)
    assert b.result is not None and b.result.skey == OTHER_HASH


@pytest.mark.parametrize("length", [MAX_PAD + 1, 0xFFFF])
def test_a_pad_c_over_512_bytes_is_refused(length: int) -> None:
    b, secret = start_receiver()
    with pytest.raises(EncryptionError) as info:
        b.receive_data(ref_step3(secret, pad_c_length=length))
    assert failure(info) is MseFailure.PAD_TOO_LONG


def test_a_pad_d_over_512_bytes_is_refused() -> None:
    a, secret, _ = start_initiator()
    with pytest.raises(EncryptionError) as info:
        a.receive_data(ref_step4(secret, select=1, pad_d_length=MAX_PAD + 1))
    assert failure(info) is MseFailure.PAD_TOO_LONG


@pytest.mark.parametrize("provide", METHODS)
@pytest.mark.parametrize("select", [0, 1, 2, 3, 4, 0x80000002, 0xFFFFFFFF])
def test_every_crypto_select_against_every_crypto_provide(provide: CryptoMethod, select: int) -> None:
    """The initiator takes one method it offered, and nothing else: none, two, or an unknown bit fail."""
    a, secret, _ = start_initiator(provide)
    good = select in (1, 2) and select & provide
    if good:
        a.receive_data(ref_step4(secret, select=select))
        assert a.result is not None and a.result.method == select
        assert (a.result.encrypt is None) == (select == 1)
    else:
        with pytest.raises(EncryptionError) as info:
            a.receive_data(ref_step4(secret, select=select))
        assert failure(info) is MseFailure.BAD_CRYPTO_SELECT


@pytest.mark.parametrize("allowed", METHODS)
@pytest.mark.parametrize("provide", [0, 1, 2, 3, 4, 5, 6, 7, 0xFFFFFFFF])
def test_every_crypto_provide_against_what_the_receiver_allows(allowed: CryptoMethod, provide: int) -> None:
    """Unknown bits are ignored; of what is left, the lowest bit we allow wins; nothing in common fails."""
    b, secret = start_receiver(allowed=allowed)
    common = provide & allowed
    if common:
        step4 = b.receive_data(ref_step3(secret, provide=provide))
        assert b.result is not None and b.result.method is lowest(common)
        plain = rc4(sha1(b"keyB", secret, INFO_HASH)).update(step4)
        assert struct.unpack(">I", plain[8:12])[0] == lowest(common)
    else:
        with pytest.raises(EncryptionError) as info:
            b.receive_data(ref_step3(secret, provide=provide))
        assert failure(info) is MseFailure.NO_COMMON_METHOD


@pytest.mark.parametrize("key", [0, 1, P - 1, P, 2**768 - 1])
def test_a_public_key_out_of_range_is_refused_by_both_sides(key: int) -> None:
    raw = key.to_bytes(96, "big")
    b = receiver()
    with pytest.raises(EncryptionError) as info:
        b.receive_data(raw)
    assert failure(info) is MseFailure.BAD_PUBLIC_KEY
    a = initiator()
    a.first_bytes()
    with pytest.raises(EncryptionError) as info:
        a.receive_data(raw)
    assert failure(info) is MseFailure.BAD_PUBLIC_KEY


def test_misuse_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Initiator(INFO_HASH[:19], HANDSHAKE, rng(1).randbytes)
    with pytest.raises(LocalProtocolError):
        Initiator(INFO_HASH, bytes(0x10000), rng(1).randbytes)
    with pytest.raises(LocalProtocolError):
        Initiator(INFO_HASH, HANDSHAKE, rng(1).randbytes, CryptoMethod(0))
    with pytest.raises(LocalProtocolError):
        Receiver(finder(INFO_HASH).get, rng(1).randbytes, CryptoMethod(0))
    a = initiator()
    with pytest.raises(LocalProtocolError):
        a.receive_data(b"x")  # before our own key went out
    a.first_bytes()
    with pytest.raises(LocalProtocolError):
        a.first_bytes()
    a, b = initiator(), receiver()
    exchange(a, b, [4096])
    with pytest.raises(LocalProtocolError):
        a.receive_data(b"more")  # past the handshake the stream ciphers take the bytes
    with pytest.raises(LocalProtocolError):
        is_plaintext_opening(PROTOCOL[:19])


# ---------------------------------------------------------------------------
# Telling a plaintext handshake, a key exchange and junk apart


def test_the_protocol_string_is_a_plaintext_handshake() -> None:
    assert is_plaintext_opening(PROTOCOL) is True


def test_real_public_keys_are_taken_for_key_exchanges() -> None:
    for seed in range(500):
        assert is_plaintext_opening(initiator(seed).first_bytes()[:20]) is False


@pytest.mark.parametrize(
    "head",
    [
        b"GET /announce HTTP/1.1\r\nHost: x",
        b"HTTP/1.1 400 Bad Request\r\n",
        b"\x13BitTorrent protocoX",
        b"\x14BitTorrent protocol!",
        bytes(range(97, 117)),
        bytes(20),
        b"\xff" * 20,
    ],
)
def test_junk_is_refused_at_the_first_20_bytes(head: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        is_plaintext_opening(head[:20])


# ---------------------------------------------------------------------------
# Fuzz: whatever comes in, only the wire's own error, after bounded work


def feed(side: Initiator | Receiver, stream: bytes, cuts: list[int]) -> int:
    """Feed ``stream`` cut at ``cuts``; how many bytes went in before the handshake ended or failed."""
    bounds = sorted({0, len(stream), *(c for c in cuts if 0 < c < len(stream))})
    fed = 0
    for start, end in zip(bounds, bounds[1:]):
        if side.result is not None:
            break
        side.receive_data(stream[start:end])
        fed = end
    return fed


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8), st.integers(0, 2**16))
def test_any_bytes_to_a_receiver_raise_only_its_errors_within_the_bounds(
    junk: bytes, cuts: list[int], seed: int
) -> None:
    b = receiver(seed)
    try:
        feed(b, junk, cuts)
    except EncryptionError:
        return
    # Still waiting, never done: random bytes hold no marker for our secret.
    assert b.result is None
    assert len(junk) < KEY_LENGTH + MAX_PAD + 20


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(METHODS), st.integers(0, 2**16))
def test_a_real_step_3_mangled_anywhere_raises_only_encryption_errors(
    data: st.DataObject, allowed: CryptoMethod, seed: int
) -> None:
    """Bytes flipped, cut off or appended anywhere in a genuine exchange: the receiver finishes
    (a flip in a pad or the initial payload changes nothing it checks) or fails with its own error."""
    a = initiator(seed)
    b = receiver(seed + 1, allowed)
    stream = bytearray(a.first_bytes())
    reply = b.receive_data(bytes(stream))
    stream = bytearray(a.receive_data(reply))
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, max(0, len(stream) - 1)))
        if stream:
            stream[at] ^= data.draw(st.integers(1, 255))
    stream = stream[: data.draw(st.integers(0, len(stream)))] + data.draw(st.binary(max_size=64))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    try:
        fed = feed(b, bytes(stream), cuts)
    except EncryptionError:
        return
    assert fed <= RECEIVER_BOUND


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1500), st.lists(st.integers(0, 1500), max_size=6), st.integers(0, 2**16))
def test_any_bytes_to_an_initiator_raise_only_its_errors(junk: bytes, cuts: list[int], seed: int) -> None:
    a = initiator(seed)
    a.first_bytes()
    try:
        feed(a, junk, cuts)
    except EncryptionError:
        return
    assert a.result is None and len(junk) < KEY_LENGTH + MAX_PAD + 8


def test_rc4_runs_here() -> None:
    assert rc4_available()


def test_without_rc4_required_encryption_fails_at_start_and_enabled_fails_only_an_encrypted_handshake() -> None:
    # cryptography leaves OpenSSL's legacy provider (RC4's home) unloaded when asked to.
    probe = """
import asyncio, random, sys
from pyowtorrent.engine.session import Session
from pyowtorrent.errors import ProtocolError, PyowtorrentError
from pyowtorrent.wire.mse import CryptoMethod, Initiator, Receiver, rc4_available
assert not rc4_available()
try:
    Session(encryption="required")
except PyowtorrentError as exc:
    assert "cannot run RC4" in str(exc), exc
else:
    raise AssertionError("a session requiring encryption started without RC4")
Session(encryption="enabled")  # starts: plaintext connections need no RC4
import logging
logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
for seed in (1, 3):  # two connections: each fails, the warning comes once
    a = Initiator(bytes(20), b"handshake", random.Random(seed).randbytes, CryptoMethod.RC4)
    b = Receiver(lambda h: bytes(20), random.Random(seed + 1).randbytes, CryptoMethod.RC4)
    try:
        a.receive_data(b.receive_data(a.first_bytes()))  # the initiator keys RC4 once it has both keys
    except ProtocolError as exc:  # the engine's CONNECTION_FAILURES: that connection ends, nothing else
        assert "cannot run RC4" in str(exc), exc
    else:
        raise AssertionError("an encrypted handshake went ahead without RC4")
"""
    env = {**os.environ, "CRYPTOGRAPHY_OPENSSL_NO_LEGACY": "1"}
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stdout.splitlines() if line.startswith("WARNING")] == [
        "WARNING this cryptography library cannot run RC4: no encrypted handshake: encrypted handshakes will fail"
    ]


# ---------------------------------------------------------------------------
# The stream wrapper the engine puts over a connection after the handshake


def test_the_cipher_reader_serves_what_was_read_ahead_then_deciphers_the_rest() -> None:
    async def main() -> None:
        a, b = initiator(11), receiver(12, CryptoMethod.RC4)
        exchange(a, b, [1 << 20])
        assert a.result is not None and b.result is not None and a.result.encrypt is not None
        inner = asyncio.StreamReader()
        later = b"the rest of the stream, " * 100
        inner.feed_data(a.result.encrypt.update(later))
        inner.feed_eof()
        reader = CipherReader(inner, b.result.decrypt.update if b.result.decrypt else None, b"ahead:")
        assert await reader.readexactly(3) == b"ahe"
        assert await reader.readexactly(10) == b"ad:" + later[:7]
        assert await reader.read(5) == later[7:12]
        assert await reader.read() == later[12:]
        assert reader.at_eof()
        with pytest.raises(asyncio.IncompleteReadError):
            await reader.readexactly(1)

    asyncio.run(main())


def test_a_plaintext_stream_with_nothing_read_ahead_stays_as_it_was() -> None:
    async def main() -> None:
        inner = asyncio.StreamReader()
        result = MseResult(CryptoMethod.PLAINTEXT, INFO_HASH, None, None, b"")
        writer: asyncio.StreamWriter = object()  # type: ignore[assignment]  # never touched
        assert secure_stream(inner, writer, result) == (inner, writer)

    asyncio.run(main())
