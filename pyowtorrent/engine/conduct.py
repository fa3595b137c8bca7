"""How much a peer may cost us within the protocol's rules, and what we do when it costs more.

The wire layer refuses what breaks a rule that protects us; these are the peers
that keep those rules and still do harm: a stream of requests while choked, or
of requests the wire layer tolerates but we cannot serve (out of range, of
length 0 or over 16 KiB), floods of messages that carry nothing, a peer that
rejects everything we ask, a peer that never reads what we send.  Blocks we
did not ask for are counted too (waste), not punished.  :class:`Conduct` keeps one peer's account;
the peer driver asks it and acts (drop, stop asking, give the slot away).
"""

from __future__ import annotations

from ..errors import PyowtorrentError
from .clock import Clock
from .meters import Allowance

__all__ = ["Conduct", "PeerMisbehaved"]

# Requests a choked peer may send before it is dropped (libtorrent drops such
# peers too): one full queue arriving after our choke is normal, a stream is not.
MAX_CHOKED_REQUESTS = 1000
# Invalid requests (out of range, length 0 or over the block limit) a peer may
# send in the life of a connection: each is rejected (BEP 6) or ignored, and
# the peer dropped beyond this.  libtorrent drops after 300 while choked; one
# full queue of a client that has the torrent's shape wrong is below it, a
# stream is not.  (The wire layer remembers more than this many, to reject each.)
MAX_INVALID_REQUESTS = 300
# Messages that cost us work and carry nothing (keep-alives, haves of pieces
# already announced, cancels of nothing, what the wire layer ignored): a burst of this many, then this many a second.
IDLE_MESSAGE_BURST = 500
IDLE_MESSAGES_PER_SECOND = 10.0
# Rejects in a row (BEP 6) before we stop asking the peer; the pause doubles
# each time it rejects again, up to the maximum, and ends when a block arrives.
REJECTS_BEFORE_BACKOFF = 8
MAX_REJECT_BACKOFF = 64.0
# An unchoked peer whose connection has taken none of our data for this long
# stops being an upload candidate (it holds a slot and reads nothing) ...
UPLOAD_STALL = 5.0
# ... and is dropped after this long.
UPLOAD_DEAD = 60.0


class PeerMisbehaved(PyowtorrentError):
    """The peer floods us or abuses the protocol within its rules: drop it."""


class Conduct:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._choked_requests = 0
        self.invalid_requests = 0
        self.wasted_bytes = 0  # blocks it sent that we had not asked for, dropped unread
        self._idle_messages = Allowance(clock, IDLE_MESSAGE_BURST, IDLE_MESSAGES_PER_SECOND)
        self._rejects_in_a_row = 0
        self._backoff = 0.0
        self.backoff_until = 0.0  # ask it for nothing before this (it kept rejecting)
        self._unsent = 0  # our bytes in its send buffer at the last look
        self._sent = 0  # our bytes that had left the send buffer at the last look
        self._last_write_progress = clock.now()

    def request_while_choked(self) -> None:
        self._choked_requests += 1
        if self._choked_requests > MAX_CHOKED_REQUESTS:
            raise PeerMisbehaved(f"{self._choked_requests} requests while choked")

    def invalid_request(self) -> None:
        self.invalid_requests += 1
        if self.invalid_requests > MAX_INVALID_REQUESTS:
            raise PeerMisbehaved(f"{self.invalid_requests} invalid requests")

    def unrequested_block(self, nbytes: int) -> None:
        self.wasted_bytes += nbytes

    def unchoked(self) -> None:
        self._choked_requests = 0

    def idle_message(self, what: str, count: int = 1) -> None:
        if not self._idle_messages.spend(count):
            raise PeerMisbehaved(f"flooding us with {what} messages")

    def rejected(self) -> bool:
        """A request of ours was rejected; true when it is time to stop asking for a while."""
        self._rejects_in_a_row += 1
        if self._rejects_in_a_row < REJECTS_BEFORE_BACKOFF:
            return False
        self._rejects_in_a_row = 0
        self._backoff = min(MAX_REJECT_BACKOFF, max(1.0, 2 * self._backoff))
        self.backoff_until = self.clock.now() + self._backoff
        return True

    def block_received(self) -> None:
        self._rejects_in_a_row = 0
        self._backoff = 0.0

    def unchoked_us(self) -> None:
        """It lets us ask again: whatever it rejected while choking us is forgotten."""
        self._rejects_in_a_row = 0
        self._backoff = 0.0
        self.backoff_until = 0.0

    def backoff_over(self, now: float) -> bool:
        """True once, when a pause in asking has run out."""
        if self.backoff_until and now >= self.backoff_until:
            self.backoff_until = 0.0
            return True
        return False

    def writes_seen(self, now: float, sent: int, unsent: int) -> bool:
        """Note how much of ours has left the send buffer, and how much waits; true when it has
        taken nothing for too long.  (A peer reading at its link's rate keeps the buffer at a
        steady level: what counts is that bytes leave it, not that it shrinks.)"""
        if unsent == 0 or sent > self._sent:
            self._last_write_progress = now
        self._sent = sent
        self._unsent = unsent
        return now - self._last_write_progress > UPLOAD_DEAD

    @property
    def upload_stalled(self) -> bool:
        """It has data of ours waiting and has taken none of it for a while: not worth an upload slot."""
        return self._unsent > 0 and self.clock.now() - self._last_write_progress > UPLOAD_STALL
