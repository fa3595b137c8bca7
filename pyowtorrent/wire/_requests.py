"""The requests we sent, and how many answers (a piece or a reject) each may still get.

Every piece or reject received is counted off here.  One that answers
nothing we asked is tolerated (libtorrent's "not in request queue": the
connection decides what to make of it), and some answers are expected though
nothing is outstanding any longer: those to a request we cancelled, and,
without the fast extension, those to requests a choke dropped — pieces
already on the way may still arrive.
"""

from __future__ import annotations

from collections.abc import KeysView

from ._limits import BlockKey

__all__ = ["RequestLedger"]

# Answers we tolerate once (to a cancel, or to requests a BEP 3 choke
# dropped) are forgotten oldest first beyond this many: a peer that never
# answers must not make the set grow for the life of the connection.
_MAX_TOLERATED = 4096


class RequestLedger:
    __slots__ = ("_requested", "_tolerated")

    def __init__(self) -> None:
        # Request -> answers it may still get: a request sent again (say
        # after a timeout) may be answered twice.
        self._requested: dict[BlockKey, int] = {}
        self._tolerated: dict[BlockKey, int] = {}

    @property
    def outstanding(self) -> KeysView[BlockKey]:
        """Requests sent and not yet answered, rejected or cancelled."""
        return self._requested.keys()

    def sent(self, key: BlockKey) -> None:
        self._requested[key] = self._requested.get(key, 0) + 1

    def cancel(self, key: BlockKey) -> bool:
        """Move an outstanding request to the tolerated ones; False if it is not outstanding."""
        count = self._requested.pop(key, None)
        if count is None:
            return False
        self._tolerate(key, count)
        return True

    def drop_all(self) -> None:
        """A BEP 3 choke: nothing is outstanding, but every answer on the way is tolerated."""
        for key, count in self._requested.items():
            self._tolerate(key, count)
        self._requested.clear()

    def answer(self, key: BlockKey) -> bool:
        """Count a piece or reject against our requests; False if none expected it."""
        expected = self._requested
        count = expected.get(key)
        if count is None:
            expected = self._tolerated
            count = expected.get(key)
            if count is None:
                return False
        if count == 1:
            del expected[key]
        else:
            expected[key] = count - 1
        return True

    def _tolerate(self, key: BlockKey, times: int) -> None:
        self._tolerated[key] = self._tolerated.pop(key, 0) + times
        if len(self._tolerated) > _MAX_TOLERATED:
            del self._tolerated[next(iter(self._tolerated))]
