"""Integrity checks shared by every allocator scheme.

`check_allocator` asserts: every owned page lies inside the arena; no byte belongs to pages of
two models (or to two pages); each model's used count equals its owned pages; the accounting
categories add up to the arena exactly; and the scheme's own invariants (`check_internal`).
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

from fineserve.memory.accounting import account

if TYPE_CHECKING:
    from fineserve.memory.allocator import KVAllocator


def check_allocator(alloc: KVAllocator, *, physical: bool = True) -> None:
    """Raise AssertionError describing the first broken invariant."""
    intervals: list[tuple[int, int, str, int]] = []
    for name in alloc.model_names:
        pages = alloc.owned_pages(name)
        assert len(pages) == alloc.used_pages(name), f"{name}: used count != owned pages"
        stride = alloc.page_stride(name)
        size = alloc.page_format(name).page_bytes
        for p in pages:
            start = p * stride
            assert p >= 0 and start + size <= alloc.arena_bytes, f"{name}: page {p} outside arena"
            intervals.append((start, start + size, name, p))
    if physical:
        intervals.sort()
        for (_s0, e0, n0, p0), (s1, _e1, n1, p1) in pairwise(intervals):
            assert e0 <= s1, f"page {p0} of {n0} overlaps page {p1} of {n1}"
    usage = alloc.usage()
    acc = account(usage)
    assert acc.total == alloc.arena_bytes, (
        f"accounting adds up to {acc.total}, arena is {alloc.arena_bytes}: {acc.as_dict()}"
    )
    check_internal = getattr(alloc, "check_internal", None)
    if check_internal is not None:
        check_internal()
