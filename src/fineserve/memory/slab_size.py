"""Choosing the slab size for a set of co-located page formats.

A slab lent to a format holds the pages whose bytes fall wholly inside it; the bytes at its
edges that no whole page covers are lost while it is lent. When the page sizes have a small
common multiple the slab is that multiple (no edge at all). Otherwise the slab is the smallest
size, among multiples of the largest page, whose worst-case edge loss stays within budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fineserve.memory.errors import InvalidFormatError

DEFAULT_EDGE_BUDGET = 0.005
DEFAULT_MIN_SLABS = 16


def pages_in_slab(slab: int, slab_bytes: int, arena_bytes: int, page_bytes: int) -> range:
    """Page ids of a `page_bytes` format that lie wholly inside slab `slab`.

    The last slab may be shorter than `slab_bytes` (it ends at the arena's end).
    """
    start = slab * slab_bytes
    end = min(start + slab_bytes, arena_bytes)
    return range(-(-start // page_bytes), end // page_bytes)


def edge_fraction(slab_bytes: int, arena_bytes: int, page_bytes: int) -> float:
    """Share of the arena lost at slab edges if every slab were cut for this format."""
    n_slabs = -(-arena_bytes // slab_bytes)
    covered = sum(
        len(pages_in_slab(s, slab_bytes, arena_bytes, page_bytes)) for s in range(n_slabs)
    )
    return 1.0 - covered * page_bytes / arena_bytes


def choose_slab_bytes(
    page_sizes: Sequence[int],
    arena_bytes: int,
    edge_budget: float = DEFAULT_EDGE_BUDGET,
    min_slabs: int = DEFAULT_MIN_SLABS,
) -> int:
    """Pick a slab size for these page sizes (see the module docstring)."""
    if not page_sizes or min(page_sizes) < 1:
        raise InvalidFormatError(f"page sizes must be positive, got {list(page_sizes)}")
    largest = max(page_sizes)
    if arena_bytes < largest:
        raise InvalidFormatError(
            f"arena of {arena_bytes} bytes cannot hold one page of {largest} bytes"
        )
    lcm = math.lcm(*page_sizes)
    if arena_bytes // lcm >= min_slabs:
        return lcm
    k = 1
    while True:
        slab = largest * k
        if arena_bytes // slab < min_slabs and k > 1:
            return largest * (k - 1)
        worst = max(edge_fraction(slab, arena_bytes, p) for p in set(page_sizes))
        if worst <= edge_budget or arena_bytes // slab < 2:
            return slab
        k = max(k + 1, int(k * 1.25))
