"""Per-model page bookkeeping inside lent memory units (slabs, mapped chunks).

A `ModelPool` holds the units currently lent to one model and the free pages inside them. It
hands out pages from its fullest partly used unit first, so sparse units drain and can be
given back. It never talks to the arena: the owning allocator lends and reclaims units.

Invariants: `owned` and the union of free lists are disjoint; for every unit,
`used[u] + len(free[u]) == capacity[u]`; `owned` is exactly the pages handed out.
"""

from __future__ import annotations

from collections.abc import Iterable

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
        "_current",
        "_dirty",
        "capacity",
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
        self.free_pages = 0
        self._current: int | None = None
        self._dirty = False

    # -- units -----------------------------------------------------------------------------
    def add_unit(self, unit: int, pages: range) -> None:
        """Take a freshly lent unit whose pages are `pages` (all free)."""
        self.free[unit] = list(reversed(pages))
        self.used[unit] = 0
        self.capacity[unit] = len(pages)
        self.free_pages += len(pages)
        for page in pages:
            self.page_unit[page] = unit
        self._dirty = True

    def remove_unit(self, unit: int) -> None:
        """Give back an empty unit."""
        free = self.free.pop(unit)
        self.free_pages -= len(free)
        for page in free:
            del self.page_unit[page]
        del self.used[unit]
        del self.capacity[unit]
        if self._current == unit:
            self._current = None
        self._dirty = True

    def empty_units(self) -> list[int]:
        return [u for u, n in self.used.items() if n == 0]

    def stranded_pages(self) -> int:
        """Free pages inside units that also hold live pages."""
        return sum(len(self.free[u]) for u, n in self.used.items() if n)

    # -- pages -----------------------------------------------------------------------------
    def take(self, n: int) -> list[int]:
        """Pop n free pages, fullest partly used unit first. Caller checked `free_pages >= n`."""
        out: list[int] = []
        while len(out) < n:
            unit = self._pick_unit()
            free = self.free[unit]
            k = min(n - len(out), len(free))
            got = free[len(free) - k :]
            del free[len(free) - k :]
            got.reverse()
            self.used[unit] += k
            out.extend(got)
            self.free_pages -= k
            if not free:
                self._current = None
        self.owned.update(out)
        return out

    def give_back(self, pages: Iterable[int]) -> list[int]:
        """Return owned pages to their units; returns the units that became empty."""
        emptied: list[int] = []
        count = 0
        current = self._current
        for page in pages:
            count += 1
            self.owned.remove(page)
            unit = self.page_unit[page]
            free = self.free[unit]
            free.append(page)
            if unit == current or len(free) == 1:
                # the fullest partly used unit may have changed
                self._dirty = True
            left = self.used[unit] - 1
            self.used[unit] = left
            if left == 0:
                emptied.append(unit)
        self.free_pages += count
        return emptied

    def take_specific(self, page: int) -> None:
        """Mark one given free page as owned (used by defragmentation moves)."""
        unit = self.page_unit[page]
        self.free[unit].remove(page)
        self.used[unit] += 1
        self.free_pages -= 1
        self.owned.add(page)
        self._dirty = True

    def _pick_unit(self) -> int:
        if self._dirty or self._current is None:
            best, best_free = -1, -1
            for unit, free in self.free.items():
                n = len(free)
                if n and (best_free < 0 or n < best_free or (n == best_free and unit < best)):
                    best, best_free = unit, n
            self._current = best
            self._dirty = False
        return self._current

    def check(self) -> None:
        """Assert the pool invariants (see the module docstring)."""
        seen_free: set[int] = set()
        for unit, free in self.free.items():
            assert self.used[unit] + len(free) == self.capacity[unit], f"unit {unit} count"
            assert not seen_free.intersection(free), f"page free twice in unit {unit}"
            seen_free.update(free)
        assert not seen_free & self.owned, "a page is both free and owned"
        assert sum(self.used.values()) == len(self.owned), "used counts != owned pages"
        assert self.free_pages == len(seen_free), "free page counter drifted"
        for page in self.owned:
            assert page in self.page_unit, f"owned page {page} lies in no lent unit"
