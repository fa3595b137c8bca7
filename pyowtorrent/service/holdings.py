"""Who holds what on the embedded tracker, so that one host cannot crowd out the others.

:class:`Holdings` keeps, for each *holder* (an IPv4 address, or an IPv6 /64:
see :func:`holder_of`), the items it holds in the order it took them, and
answers "who holds the most?" in O(1): holders are kept in buckets by how many
items they hold, the way the piece picker keeps pieces by availability.  The
registry keeps two: the entries each holder has in all torrents, and the
torrents in which a holder is the only one with peers.  When a table is full,
the newcomer's room comes from the biggest holder, and only if that holder
would still hold more than the newcomer afterwards (so honest hosts with a few
items each are never shed for one another: a full table then refuses).

No clock, no I/O; the items are anything hashable.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from ..tracker.peers import Holder, holder_of

__all__ = ["Holder", "Holdings", "holder_of"]

_Item = TypeVar("_Item", bound=Hashable)


class Holdings(Generic[_Item]):
    """Items by holder, oldest first, with the biggest holder found in O(1)."""

    __slots__ = ("_items", "_by_count", "_top")

    def __init__(self) -> None:
        self._items: dict[Holder, dict[_Item, None]] = {}
        # count -> the holders holding exactly that many (a dict used as an ordered set)
        self._by_count: dict[int, dict[Holder, None]] = {}
        self._top = 0  # the largest count with a holder, 0 if none

    def count(self, holder: Holder) -> int:
        items = self._items.get(holder)
        return 0 if items is None else len(items)

    def add(self, holder: Holder, item: _Item) -> None:
        """``holder`` now holds ``item`` (its newest); nothing if it held it already."""
        items = self._items.setdefault(holder, {})
        if item in items:
            return
        items[item] = None
        self._move(holder, len(items) - 1, len(items))

    def discard(self, holder: Holder, item: _Item) -> None:
        items = self._items.get(holder)
        if items is None or item not in items:
            return
        del items[item]
        self._move(holder, len(items) + 1, len(items))
        if not items:
            del self._items[holder]

    def oldest(self, holder: Holder) -> _Item | None:
        """The item ``holder`` took first (of those it still holds)."""
        items = self._items.get(holder)
        return None if not items else next(iter(items))

    def biggest(self) -> tuple[Holder, int] | None:
        """A holder holding the most items, and how many (on a tie, the first to hold that many)."""
        if not self._top:
            return None
        return next(iter(self._by_count[self._top])), self._top

    def shed_for(self, newcomer: Holder) -> _Item | None:
        """The item to take away so ``newcomer`` may take one, or ``None`` if none should go.

        The biggest holder gives up its oldest item if, afterwards, it would
        still hold at least as many as the newcomer: room goes from whoever
        holds the most, never from a host no bigger than the one asking.
        """
        biggest = self.biggest()
        if biggest is None or biggest[1] <= self.count(newcomer) + 1:
            return None
        return self.oldest(biggest[0])

    def _move(self, holder: Holder, old: int, new: int) -> None:
        if old:
            bucket = self._by_count[old]
            del bucket[holder]
            if not bucket:
                del self._by_count[old]
        if new:
            self._by_count.setdefault(new, {})[holder] = None
        # Counts move by one, so the top moves by at most one.
        if new > self._top:
            self._top = new
        elif self._top not in self._by_count:
            self._top -= 1
