"""`ModelPool.give_back` applies runs of pages of one unit at once: every bucket sees the same
operations in the same order as the page-by-page version, so its state, its iteration order
included (which `_fullest_unit` may read), equals the page-by-page version's."""

from __future__ import annotations

import random

import pytest

from fineserve.memory.pool import ModelPool


def give_back_page_by_page(pool: ModelPool, pages: list[int]) -> list[int]:
    """The straightforward version: one page at a time."""
    emptied: list[int] = []
    pool.owned.difference_update(pages)
    for page in pages:
        unit = pool.page_unit[page]
        free = pool.free[unit]
        k = len(free)
        pool._by_free[k].discard(unit)
        free.append(page)
        pool._by_free[k + 1].add(unit)
        if not k:
            pool._low = 1
        left = pool.used[unit] - 1
        pool.used[unit] = left
        if left == 0:
            pool.empty.add(unit)
            emptied.append(unit)
    pool.free_pages += len(pages)
    return emptied


def state(pool: ModelPool) -> tuple[object, ...]:
    """Everything a later call may read, sets in their iteration order."""
    return (
        [list(b) for b in pool._by_free],
        {u: list(f) for u, f in pool.free.items()},
        dict(pool.used),
        list(pool.empty),
        list(pool.owned),
        pool._low,
        pool.free_pages,
    )


def twin_pools(seed: int, units: int, capacity: int) -> tuple[ModelPool, ModelPool]:
    pools = (ModelPool(), ModelPool())
    for pool in pools:
        for u in range(units):
            pool.add_unit(u, range(u * capacity, (u + 1) * capacity))
    return pools


@pytest.mark.parametrize(("seed", "units", "capacity"), [(0, 3, 8), (1, 48, 4), (2, 40, 4)])
def test_give_back_equals_page_by_page(seed: int, units: int, capacity: int) -> None:
    """Random takes and give-backs (runs of one unit, mixed units, whole sequences, units
    emptied and refilled, many units per bucket): the same returned units and the same state
    after every call, bucket iteration orders included."""
    rng = random.Random(seed)
    fast, plain = twin_pools(seed, units, capacity)
    held: list[list[int]] = []  # pages per simulated sequence
    crowded = 0  # most units seen in one bucket of partly used units
    for _ in range(400):
        if fast.free_pages and (not held or rng.random() < 0.55):
            n = rng.randint(1, min(fast.free_pages, 3 * capacity))
            got = fast.take(n)
            assert plain.take(n) == got
            held.append(got)
        else:
            seq = held.pop(rng.randrange(len(held)))
            back = seq if rng.random() < 0.7 else rng.sample(seq, len(seq))
            assert fast.give_back(list(back)) == give_back_page_by_page(plain, list(back))
        assert state(fast) == state(plain)
        fast.check()
        crowded = max(crowded, *map(len, fast._by_free[1:capacity]))
    if units >= 12:
        assert crowded >= 8  # buckets `_fullest_unit` takes from in iteration order
