"""`UniformAllocator`: the O(1) `available_pages` (kept reserve debt) answers as the plain sum,
and `grants_in_pieces` True means every interleaving of the pieces is granted."""

from __future__ import annotations

import contextlib
import random

import pytest

from fineserve.memory.allocator import ModelKV
from fineserve.memory.baselines.uniform import UniformAllocator
from fineserve.memory.errors import OutOfPagesError
from fineserve.memory.formats import KVFormat

FMT = KVFormat(2, 2, 64)


def make(rng: random.Random) -> UniformAllocator:
    page = FMT.page_bytes
    models = [ModelKV(f"m{i}", FMT, reserve_bytes=rng.randint(0, 12) * page) for i in range(3)]
    return UniformAllocator(40 * page, models)


def plain_available(alloc: UniformAllocator, model: str) -> int:
    """The definition: free blocks less the other models' unmet reserves."""
    owed = sum(
        max(0, alloc._reserve[m] - alloc.used_pages(m)) for m in alloc.model_names if m != model
    )
    return max(0, len(alloc._free) - owed)


def fill(alloc: UniformAllocator, rng: random.Random) -> dict[str, list[int]]:
    held: dict[str, list[int]] = {m: [] for m in alloc.model_names}
    for _ in range(rng.randint(0, 30)):
        m = rng.choice(alloc.model_names)
        if held[m] and rng.random() < 0.3:
            alloc.free(m, [held[m].pop()])
        else:
            with contextlib.suppress(OutOfPagesError):
                held[m] += alloc.allocate(m, rng.randint(1, 3))
        for name in alloc.model_names:
            assert alloc.available_pages(name) == plain_available(alloc, name)
    alloc.check_internal()
    return held


@pytest.mark.parametrize("seed", range(200))
def test_grants_in_pieces_means_every_interleaving_is_granted(seed: int) -> None:
    def state() -> UniformAllocator:  # the same allocator state each time
        rng = random.Random(seed)
        alloc = make(rng)
        fill(alloc, rng)
        return alloc

    alloc = state()
    rng = random.Random(seed + 1)
    needs = {m: rng.randint(0, 8) for m in alloc.model_names}
    if not alloc.grants_in_pieces(needs):
        return
    for _ in range(20):
        trial = state()
        pieces = [m for m, n in needs.items() for _ in range(n)]
        rng.shuffle(pieces)
        at = 0
        while at < len(pieces):  # runs of the same model in one call, others one by one
            m, n = pieces[at], 1
            while at + n < len(pieces) and pieces[at + n] == m and rng.random() < 0.5:
                n += 1
            trial.allocate(m, n)  # never OutOfPagesError
            at += n
        trial.check_internal()


def test_grants_in_pieces_is_not_always_true() -> None:
    alloc = make(random.Random(1))
    assert not alloc.grants_in_pieces({"m0": 41})
    assert alloc.grants_in_pieces({"m0": 0})
