"""Per-model page bookkeeping inside lent memory units (slabs, mapped chunks).

A `ModelPool` holds the units currently lent to one model and the free pages inside them. It
hands out pages from its fullest partly used unit first (fewest free pages), so sparse units
drain and can be given back. It never talks to the arena: the owning allocator lends and
reclaims units.

Invariants: `owned` and the union of free lists are disjoint; for every unit,
`used[u] + len(free[u]) == capacity[u]`; `owned` is exactly the pages handed out; unit `u` is
in `_by_free[len(free[u])]` and nowhere else; `_by_free` has a bucket for every count up to the
largest capacity; every non-empty bucket `_by_free[k]` with `k >= 1` has `k >= _low` (so the
search for the fullest partly used unit starts at `_low`); `empty` is the set of units with
`used == 0`.

The hot path (`take`, `give_back`) keeps the exact sequence of bucket operations of the
straightforward version, so which unit is "fullest" among equals never depends on speed-ups.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from itertools import groupby, repeat

from fineserve.memory.errors import DoubleFreeError


def check_free_request(model: str, pages: Iterable[int], owned: set[int]) -> list[int]:
    """Return `pages` as a list, or raise DoubleFreeError if any is not owned or repeated."""
    pages = list(pages)
    if len(pages) == 1:
        if pages[0] in owned:
            return pages
    elif len(set(pages)) == len(pages) and owned.issuperset(pages):
        return pages
    seen: set[int] = set()
    bad = []
    for p in pages:
        if p not in owned or p in seen:
            bad.append(p)
        seen.add(p)
    raise DoubleFreeError(f"model {model!r} does not hold pages {sorted(bad)[:8]} (double free?)")


class ModelPool:
    """Pages of one model, grouped by the unit that holds them."""

    __slots__ = (
        "_by_free",
        "_low",
        "capacity",
        "empty",
        "free",
        "free_pages",
        "owned",
        "page_unit",
        "used",
    )

    def __init__(self) -> None:
        self.free: dict[int, list[int]] = {}
        self.used: dict[int, int] = {}
        self.capacity: dict[int, int] = {}
        self.owned: set[int] = set()
        self.page_unit: dict[int, int] = {}
        self.empty: set[int] = set()
        self.free_pages = 0
        self._by_free: list[set[int]] = [set()]
        self._low = 1  # lower bound on the fullest partly used unit's free count

    # -- units -----------------------------------------------------------------------------
    def add_unit(self, unit: int, pages: range) -> None:
        """Take a freshly lent unit whose pages are `pages` (all free)."""
        self.free[unit] = list(reversed(pages))
        self.used[unit] = 0
        self.capacity[unit] = len(pages)
        self.free_pages += len(pages)
        self.empty.add(unit)
        self._bucket(len(pages)).add(unit)
        self._lower(len(pages))
        for page in pages:
            self.page_unit[page] = unit

    def remove_unit(self, unit: int) -> None:
        """Give back an empty unit."""
        free = self.free.pop(unit)
        self._by_free[len(free)].discard(unit)
        self.free_pages -= len(free)
        self.empty.discard(unit)
        for page in free:
            del self.page_unit[page]
        del self.used[unit]
        del self.capacity[unit]

    def empty_units(self) -> list[int]:
        return sorted(self.empty)

    def stranded_pages(self) -> int:
        """Free pages inside units that also hold live pages."""
        return sum(len(self.free[u]) for u, n in self.used.items() if n)

    # -- pages -----------------------------------------------------------------------------
    def take(self, n: int) -> list[int]:
        """Pop n free pages, fullest partly used unit first. Caller checked `free_pages >= n`."""
        by_free = self._by_free
        free_of = self.free
        used = self.used
        if n == 1:  # a sequence crossing a page boundary: the common case
            unit = self._fullest_unit()
            free = free_of[unit]
            k = len(free)
            by_free[k].discard(unit)
            page = free.pop()
            by_free[k - 1].add(unit)
            if k > 1 and k - 1 < self._low:
                self._low = k - 1
            if not used[unit]:
                self.empty.discard(unit)
            used[unit] += 1
            self.free_pages -= 1
            self.owned.add(page)
            return [page]
        out: list[int] = []
        while len(out) < n:
            unit = self._fullest_unit()
            free = free_of[unit]
            have = len(free)
            k = min(n - len(out), have)
            by_free[have].discard(unit)
            got = free[have - k :]
            del free[have - k :]
            by_free[have - k].add(unit)
            if have - k and have - k < self._low:
                self._low = have - k
            got.reverse()
            if used[unit] == 0:
                self.empty.discard(unit)
            used[unit] += k
            out.extend(got)
        self.free_pages -= n
        self.owned.update(out)
        return out

    def give_back(self, pages: list[int]) -> list[int]:
        """Return owned pages to their units; returns the units that became empty. The caller
        checked that `pages` are owned and distinct.

        Page by page, a unit with k free pages moves from bucket k to bucket k + 1. A run of
        m consecutive pages of one unit is applied at once with the same operations on every
        bucket, in the same order per bucket (the only order a set's state depends on):
        bucket k loses the unit, each of buckets k+1 .. k+m-1 gains then loses it, bucket
        k + m gains it; the unit's free list is extended in page order, and it can only
        become empty at the run's last page (each page of the run is one it holds)."""
        emptied: list[int] = []
        by_free = self._by_free
        free_of = self.free
        used = self.used
        self.owned.difference_update(pages)
        at = 0
        for unit, run in groupby(map(self.page_unit.__getitem__, pages)):
            m = len(list(run))
            free = free_of[unit]
            k = len(free)
            if not k:
                self._low = 1
            by_free[k].discard(unit)
            if m > 1:
                between = by_free[k + 1 : k + m]
                deque(map(set.add, between, repeat(unit)), 0)
                deque(map(set.discard, between, repeat(unit)), 0)
            by_free[k + m].add(unit)
            free.extend(pages[at : at + m])
            at += m
            left = used[unit] - m
            used[unit] = left
            if left == 0:
                self.empty.add(unit)
                emptied.append(unit)
        self.free_pages += len(pages)
        return emptied

    def take_specific(self, page: int) -> None:
        """Mark one given free page as owned (used by defragmentation moves)."""
        unit = self.page_unit[page]
        free = self.free[unit]
        self._by_free[len(free)].discard(unit)
        free.remove(page)
        self._by_free[len(free)].add(unit)
        self._lower(len(free))
        self.empty.discard(unit)
        self.used[unit] += 1
        self.free_pages -= 1
        self.owned.add(page)

    def _bucket(self, free_count: int) -> set[int]:
        by_free = self._by_free
        if len(by_free) <= free_count:  # one bucket per free count up to it (a static
            # partition's single unit needs tens of thousands: made in one comprehension)
            by_free += [set() for _ in range(free_count + 1 - len(by_free))]
        return by_free[free_count]

    def _lower(self, free_count: int) -> None:
        """Note that a unit now has `free_count` free pages (keeps `_low` a lower bound)."""
        if 0 < free_count < self._low:
            self._low = free_count

    def _fullest_unit(self) -> int:
        if len(self.free) <= 8:  # few, large units (static partitions): scanning them is cheaper
            return min((len(f), u) for u, f in self.free.items() if f)[1]
        by_free = self._by_free
        for count in range(self._low, len(by_free)):
            bucket = by_free[count]
            if bucket:
                self._low = count
                return min(bucket) if len(bucket) < 8 else next(iter(bucket))
        raise AssertionError("no unit has a free page")

    def check(self) -> None:
        """Assert the pool invariants (see the module docstring)."""
        seen_free: set[int] = set()
        for unit, free in self.free.items():
            assert self.used[unit] + len(free) == self.capacity[unit], f"unit {unit} count"
            assert not seen_free.intersection(free), f"page free twice in unit {unit}"
            assert unit in self._by_free[len(free)], f"unit {unit} in the wrong bucket"
            assert (self.used[unit] == 0) == (unit in self.empty), f"unit {unit} emptiness"
            seen_free.update(free)
        assert sum(len(b) for b in self._by_free) == len(self.free), "stale bucket entries"
        assert not any(self._by_free[1 : self._low]), "a partly used unit below the search start"
        assert not seen_free & self.owned, "a page is both free and owned"
        assert sum(self.used.values()) == len(self.owned), "used counts != owned pages"
        assert self.free_pages == len(seen_free), "free page counter drifted"
        for page in self.owned:
            assert page in self.page_unit, f"owned page {page} lies in no lent unit"
