"""Message stream encryption (MSE/PE), the obfuscated handshake, sans I/O.

Many clients are set to prefer or require it; its de facto specification is
the Vuze wiki's "Message Stream Encryption" page.  A (who dialled) and B
(who accepted) exchange::

    1  A->B  Ya, PadA
    2  B->A  Yb, PadB
    3  A->B  HASH('req1', S), HASH('req2', SKEY) xor HASH('req3', S),
             ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)
    4  B->A  ENCRYPT(VC, crypto_select, len(PadD), PadD), ENCRYPT2(payload)
    5  A->B  ENCRYPT2(payload)

Ya and Yb are Diffie-Hellman public keys (96 bytes, big-endian, modulo the
768-bit prime ``P``, generator 2), S the shared secret (96 bytes), SKEY the
torrent's info-hash, HASH SHA-1.  ENCRYPT is RC4 keyed with
HASH('keyA', S, SKEY) from A to B and HASH('keyB', S, SKEY) from B to A,
the first 1024 bytes of key stream thrown away.  VC is eight zero bytes;
crypto_provide and crypto_select are 32-bit bit sets (0x01 plaintext,
0x02 RC4), the lengths 16-bit, every pad 0 to 512 random bytes.  ENCRYPT2
is the same RC4 stream going on, or nothing if crypto_select chose
plaintext: the key exchange and the initial payload (IA: A's BitTorrent
handshake) are obfuscated either way, only the rest of the stream differs.

Neither side knows how long the other's pad is: B looks for HASH('req1', S)
after Ya, A for ENCRYPT(VC) after Yb.  Both searches are bounded by the
longest pad: what does not show its marker within 512 bytes is refused.

:class:`Initiator` and :class:`Receiver` take bytes and return bytes to
send, like :class:`~pyowtorrent.wire.PeerConnection`; ``wanted`` says how
many bytes they can take without reading past the handshake, so a driver
that reads exactly that many never has to hand bytes back.  Randomness (the
private key, pad lengths and contents) comes from a callable passed in:
``secrets.token_bytes``, or a seeded ``random.Random().randbytes`` in the
simulator.  RC4 is ``cryptography``'s (OpenSSL's): this module runs the
cipher over the handshake only; the driver gets the two :class:`Rc4`
objects for the stream.  ``cryptography`` is imported at the first encrypted
handshake, not with this module: it costs every start-up ~8 ms, and most
connections are plaintext.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ProtocolError
from .errors import LocalProtocolError, RemoteProtocolError, Violation
from .handshake import PROTOCOL

log = logging.getLogger(__name__)

__all__ = [
    "CryptoMethod",
    "EncryptionError",
    "Initiator",
    "KEY_LENGTH",
    "MAX_PAD",
    "MseFailure",
    "MseResult",
    "P",
    "Rc4",
    "Receiver",
    "is_plaintext_opening",
    "rc4_available",
    "skey_hash",
]

# The spec's prime: 768 bits, so public keys and the secret are 96 bytes.
P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF95"
    "19B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563",
    16,
)
G = 2
KEY_LENGTH = 96
# The spec asks for at least 128 bits and sees no gain past 180; 160 is what
# libtorrent and others use.  Each key exchange costs two modular powers.
PRIVATE_KEY_BITS = 160
# Every pad is at most this long: the bound of both marker searches.
MAX_PAD = 512
VC = bytes(8)
# RC4's first bytes of key stream leak its key; the spec throws away 1 KiB.
RC4_DISCARD = 1024
# len(IA) is a 16-bit field.
MAX_IA = 0xFFFF

_U16 = struct.Struct(">H")
_SELECT = struct.Struct(">IH")  # crypto_select, len(PadD)
_PROVIDE = struct.Struct(">8sIH")  # VC, crypto_provide, len(PadC)

RandBytes = Callable[[int], bytes]


class CryptoMethod(enum.IntFlag):
    """What the stream is after the handshake: crypto_provide and crypto_select bits."""

    PLAINTEXT = 0x01
    RC4 = 0x02


_KNOWN = CryptoMethod.PLAINTEXT | CryptoMethod.RC4


class MseFailure(enum.StrEnum):
    """Which rule of the encrypted handshake a peer broke, stable for code to test."""

    BAD_PUBLIC_KEY = "public key out of range"
    NO_SYNC_MARKER = "no synchronisation marker within the longest pad"
    UNKNOWN_TORRENT = "stream key of no torrent here"
    BAD_VC = "wrong verification constant"
    PAD_TOO_LONG = "pad over 512 bytes"
    NO_COMMON_METHOD = "no crypto method in common"
    BAD_CRYPTO_SELECT = "crypto select not one method offered"


class EncryptionError(RemoteProtocolError):
    """The remote broke the encrypted handshake; ``failure`` names the rule.

    A :class:`RemoteProtocolError` (so whatever ends a connection on one ends
    it on this), with the reason ``BAD_PROTOCOL_STRING``: the stream is not
    one we can read.
    """

    def __init__(self, failure: MseFailure, detail: str) -> None:
        super().__init__(Violation.BAD_PROTOCOL_STRING, f"encrypted handshake: {failure}: {detail}")
        self.failure = failure


def rc4_available() -> bool:
    """Whether this ``cryptography`` can run RC4.

    OpenSSL 3 keeps RC4 in its legacy provider, which ``cryptography``'s
    wheels load but a distribution's build, or ``CRYPTOGRAPHY_OPENSSL_NO_LEGACY``,
    may leave out.
    """
    try:
        _rc4_context(bytes(16))
    except ProtocolError:
        return False
    return True


def _rc4_context(key: bytes) -> Any:
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
        from cryptography.hazmat.primitives.ciphers import Cipher
    except ImportError as exc:  # a broken install: a connection failure like any other
        raise ProtocolError(f"cryptography cannot be imported ({exc}): no encrypted handshake") from None
    try:
        return Cipher(ARC4(key), mode=None).encryptor()
    except UnsupportedAlgorithm:
        # The session checks at start when encryption is required; when it is only enabled, an
        # encrypted handshake fails here, and with it that one connection.
        raise ProtocolError("this cryptography library cannot run RC4: no encrypted handshake") from None


_told_no_rc4 = False


class Rc4:
    """One direction's RC4 stream, past its first 1024 bytes.

    ``update(data)`` enciphers or deciphers (RC4 is its own inverse) and
    returns new bytes: one pass of OpenSSL's C code over the data.
    """

    __slots__ = ("update",)

    def __init__(self, key: bytes) -> None:
        global _told_no_rc4
        try:
            context = _rc4_context(key)
        except ProtocolError as exc:
            if not _told_no_rc4:  # once a process, as the session did at start before RC4 was imported lazily
                _told_no_rc4 = True
                log.warning("%s: encrypted handshakes will fail", exc)
            raise
        context.update(bytes(RC4_DISCARD))
        self.update: Callable[[bytes | bytearray | memoryview], bytes] = context.update


def _sha1(*parts: bytes) -> bytes:
    return hashlib.sha1(b"".join(parts)).digest()


def skey_hash(info_hash: bytes) -> bytes:
    """HASH('req2', SKEY): how step 3 names the torrent, so a receiver can look it up."""
    return _sha1(b"req2", info_hash)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


# -- telling an incoming plaintext handshake, an MSE key exchange and junk apart ----------

# Bytes a text protocol (HTTP, SMTP, a mistyped URL) or a protocol name is made of.
_TEXT = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}


def is_plaintext_opening(head: bytes) -> bool:
    """Whether the first 20 bytes of an incoming stream open a plaintext handshake.

    ``False`` when they may be the start of an MSE public key.  Raises
    :class:`RemoteProtocolError` (``BAD_PROTOCOL_STRING``) for what is
    neither, at once, as for a stream that is no handshake at all: 19 bytes
    of text after the first (an HTTP request, another protocol's name, a
    mangled BitTorrent handshake), or one byte over and over (zeros).  A
    public key is uniform over nearly 2^768 values, so a real one looks like
    that with a chance under 10^-8 (text) or 2^-150 (one byte); such a peer
    is turned away once, and its retry goes through.
    """
    if len(head) != len(PROTOCOL):
        raise LocalProtocolError(f"classify the first {len(PROTOCOL)} bytes, not {len(head)}")
    if head == PROTOCOL:
        return True
    if all(b in _TEXT for b in head[1:]) or head.count(head[0]) == len(head):
        raise RemoteProtocolError(
            Violation.BAD_PROTOCOL_STRING, f"the stream starts with {head!r}: neither a handshake nor a key"
        )
    return False


# -- the two sides ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MseResult:
    """A finished encrypted handshake.

    ``encrypt`` and ``decrypt`` are the stream's RC4 (``None`` when the
    stream goes on in plaintext).  ``payload`` is what the remote sent after
    the handshake, already deciphered: the initial payload (at the
    receiver), then whatever followed in the same reads.
    """

    method: CryptoMethod
    skey: bytes
    encrypt: Rc4 | None
    decrypt: Rc4 | None
    payload: bytes


class _State(enum.Enum):
    KEY = "their public key"
    SYNC = "the synchronisation marker"
    CRYPTO = "the crypto field"
    PAD = "the pad"
    IA = "the initial payload"
    DONE = "done"
    FAILED = "failed"


class _Side:
    """What both sides share: our key pair, the buffer, the marker search, the steps."""

    def __init__(self, randbytes: RandBytes) -> None:
        self._random = randbytes
        # The top bit set: a private key of exactly 160 bits, never a tiny one.
        x = int.from_bytes(randbytes(PRIVATE_KEY_BITS // 8), "big") | (1 << (PRIVATE_KEY_BITS - 1))
        self._private = x
        self.public_key = pow(G, x, P).to_bytes(KEY_LENGTH, "big")
        self._buf = bytearray()
        self._state = _State.KEY
        self._need = KEY_LENGTH  # bytes the current fixed-size step waits for
        self._marker = b""  # what SYNC looks for
        self._decrypt: Rc4 | None = None
        self._method = CryptoMethod.PLAINTEXT  # what the stream becomes, once chosen
        self._payload = b""
        self.result: MseResult | None = None

    def _pad(self) -> bytes:
        return self._random(int.from_bytes(self._random(2), "big") % (MAX_PAD + 1))

    def _secret(self, their_key: bytes) -> bytes:
        y = int.from_bytes(their_key, "big")
        # 0, 1 and P-1 give a secret anyone can guess; P and beyond are no key.
        if not 1 < y < P - 1:
            raise EncryptionError(MseFailure.BAD_PUBLIC_KEY, f"{their_key[:8].hex()}...")
        return pow(y, self._private, P).to_bytes(KEY_LENGTH, "big")

    @property
    def wanted(self) -> int:
        """How many bytes to read next so as not to read past the handshake (0: done or failed)."""
        if self._state in (_State.DONE, _State.FAILED):
            return 0
        if self._state is not _State.SYNC:
            return self._need - len(self._buf)
        # The marker can end no sooner than after the rest of any partial match
        # at the end of the buffer.
        marker, buf = self._marker, self._buf
        partial = next((k for k in range(min(len(marker) - 1, len(buf)), 0, -1) if buf.endswith(marker[:k])), 0)
        window_left = MAX_PAD + len(marker) - len(buf)
        return max(1, min(len(marker) - partial, window_left))

    def receive_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Take bytes from the remote; return the bytes to send it now (maybe none)."""
        if self._state is _State.DONE:
            raise LocalProtocolError("the encrypted handshake is over: the stream's bytes go through its ciphers")
        if self._state is _State.FAILED:
            raise LocalProtocolError("the encrypted handshake already failed")
        self._buf += data
        out: list[bytes] = []
        try:
            while self._step(out):  # False: waiting for bytes, or done
                pass
        except EncryptionError:
            self._state = _State.FAILED
            self._buf.clear()
            raise
        return b"".join(out)

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _ready(self) -> bool:
        return len(self._buf) >= self._need

    def _expect(self, state: _State, n: int) -> None:
        self._state, self._need = state, n

    def _sync(self) -> bool:
        """Find the marker within the longest pad; consume through it."""
        marker = self._marker
        window = MAX_PAD + len(marker)
        at = self._buf.find(marker, 0, window)
        if at < 0:
            if len(self._buf) >= window:
                raise EncryptionError(MseFailure.NO_SYNC_MARKER, f"none in {window} bytes")
            return False
        del self._buf[: at + len(marker)]
        return True

    def _finish(self, method: CryptoMethod, skey: bytes, encrypt: Rc4, decrypt: Rc4) -> None:
        rest = self._take(len(self._buf))
        rc4 = method == CryptoMethod.RC4
        if rc4 and rest:
            rest = decrypt.update(rest)
        self._state = _State.DONE
        self.result = MseResult(
            method, skey, encrypt if rc4 else None, decrypt if rc4 else None, self._payload + rest
        )

    def _step(self, out: list[bytes]) -> bool:
        raise NotImplementedError


class Initiator(_Side):
    """Side A: we dialled, and know the torrent (``skey``, its info-hash).

    ``provide``: the stream methods we accept.  ``initial_payload`` goes in
    IA, enciphered whatever the remote selects: our BitTorrent handshake.
    Send :meth:`first_bytes`, then feed the remote's bytes to
    :meth:`receive_data` and send what it returns, until ``result``.
    """

    def __init__(
        self, skey: bytes, initial_payload: bytes, randbytes: RandBytes, provide: CryptoMethod = _KNOWN
    ) -> None:
        if len(skey) != 20:
            raise LocalProtocolError("the stream key is a 20-byte info-hash")
        if len(initial_payload) > MAX_IA:
            raise LocalProtocolError(f"an initial payload of {len(initial_payload)} bytes; the field holds {MAX_IA}")
        if not provide or provide & ~_KNOWN:
            raise LocalProtocolError(f"crypto_provide {int(provide):#x}: plaintext, RC4 or both")
        super().__init__(randbytes)
        self.skey = skey
        self.provide = provide
        self._ia = initial_payload
        self._encrypt: Rc4 | None = None
        self._first_sent = False

    def first_bytes(self) -> bytes:
        """Step 1: our public key and a pad, the first bytes we send, once."""
        if self._first_sent:
            raise LocalProtocolError("the public key was already sent")
        self._first_sent = True
        return self.public_key + self._pad()

    def _step(self, out: list[bytes]) -> bool:
        if not self._first_sent:
            raise LocalProtocolError("send first_bytes() before taking the remote's")
        state = self._state
        if state is _State.KEY:
            if not self._ready():
                return False
            secret = self._secret(self._take(KEY_LENGTH))
            self._encrypt = encrypt = Rc4(_sha1(b"keyA", secret, self.skey))
            self._decrypt = decrypt = Rc4(_sha1(b"keyB", secret, self.skey))
            pad = self._pad()
            out.append(_sha1(b"req1", secret))
            out.append(_xor(skey_hash(self.skey), _sha1(b"req3", secret)))
            out.append(
                encrypt.update(
                    b"".join((_PROVIDE.pack(VC, self.provide, len(pad)), pad, _U16.pack(len(self._ia)), self._ia))
                )
            )
            # B's reply starts with VC under its key: that is the marker after PadB.
            self._marker = decrypt.update(VC)
            self._state = _State.SYNC
            return True
        assert self._decrypt is not None and self._encrypt is not None
        if state is _State.SYNC:
            if not self._sync():
                return False
            self._expect(_State.CRYPTO, _SELECT.size)
            return True
        if state is _State.CRYPTO:
            if not self._ready():
                return False
            select, pad_length = _SELECT.unpack(self._decrypt.update(self._take(_SELECT.size)))
            if select not in (CryptoMethod.PLAINTEXT, CryptoMethod.RC4) or not select & self.provide:
                raise EncryptionError(
                    MseFailure.BAD_CRYPTO_SELECT, f"{select:#x}, for crypto_provide {int(self.provide):#x}"
                )
            if pad_length > MAX_PAD:
                raise EncryptionError(MseFailure.PAD_TOO_LONG, f"len(PadD) {pad_length}")
            self._method = CryptoMethod(select)
            self._expect(_State.PAD, pad_length)
            return True
        if state is _State.PAD:
            if not self._ready():
                return False
            self._decrypt.update(self._take(self._need))  # PadD: only the key stream's position counts
            self._finish(self._method, self.skey, self._encrypt, self._decrypt)
            return False
        raise AssertionError(state)


class Receiver(_Side):
    """Side B: the remote dialled us.

    ``find_skey`` maps HASH('req2', SKEY) (see :func:`skey_hash`) to the
    info-hash of one of our torrents, or ``None``.  ``allowed``: the stream
    methods we accept; of those the remote provides, the lowest bit wins
    (plaintext before RC4, as libtorrent chooses by default).  The first
    bytes we send go out once the remote's public key is in.
    """

    def __init__(
        self, find_skey: Callable[[bytes], bytes | None], randbytes: RandBytes, allowed: CryptoMethod = _KNOWN
    ) -> None:
        if not allowed or allowed & ~_KNOWN:
            raise LocalProtocolError(f"allowed methods {int(allowed):#x}: plaintext, RC4 or both")
        super().__init__(randbytes)
        self.allowed = allowed
        self._find_skey = find_skey
        self._secret_bytes = b""
        self._skey = b""
        self._encrypt: Rc4 | None = None

    def _step(self, out: list[bytes]) -> bool:
        state = self._state
        if state is _State.KEY:
            if not self._ready():
                return False
            self._secret_bytes = self._secret(self._take(KEY_LENGTH))
            out.append(self.public_key + self._pad())
            self._marker = _sha1(b"req1", self._secret_bytes)
            self._state = _State.SYNC
            return True
        if state is _State.SYNC:
            if not self._sync():
                return False
            self._expect(_State.CRYPTO, 20 + _PROVIDE.size)
            return True
        if state is _State.CRYPTO:
            if not self._ready():
                return False
            secret = self._secret_bytes
            skey = self._find_skey(_xor(self._take(20), _sha1(b"req3", secret)))
            if skey is None:
                raise EncryptionError(MseFailure.UNKNOWN_TORRENT, "no torrent of ours has that stream key")
            self._skey = skey
            self._decrypt = decrypt = Rc4(_sha1(b"keyA", secret, skey))
            self._encrypt = Rc4(_sha1(b"keyB", secret, skey))
            vc, provide, pad_length = _PROVIDE.unpack(decrypt.update(self._take(_PROVIDE.size)))
            if vc != VC:
                raise EncryptionError(MseFailure.BAD_VC, vc.hex())
            common = provide & int(self.allowed)
            if not common:
                raise EncryptionError(
                    MseFailure.NO_COMMON_METHOD, f"crypto_provide {provide:#x}, we take {int(self.allowed):#x}"
                )
            if pad_length > MAX_PAD:
                raise EncryptionError(MseFailure.PAD_TOO_LONG, f"len(PadC) {pad_length}")
            self._method = CryptoMethod(common & -common)  # the lowest bit
            self._expect(_State.PAD, pad_length + _U16.size)  # PadC, len(IA)
            return True
        assert self._decrypt is not None and self._encrypt is not None
        if state is _State.PAD:
            if not self._ready():
                return False
            (ia_length,) = _U16.unpack(self._decrypt.update(self._take(self._need))[-_U16.size :])
            self._expect(_State.IA, ia_length)
            return True
        if state is _State.IA:
            if not self._ready():
                return False
            self._payload = self._decrypt.update(self._take(self._need)) if self._need else b""
            pad = self._pad()
            out.append(self._encrypt.update(b"".join((VC, _SELECT.pack(self._method, len(pad)), pad))))
            self._finish(self._method, self._skey, self._encrypt, self._decrypt)
            return False
        raise AssertionError(state)
