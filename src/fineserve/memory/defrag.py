"""Defragmentation planning for KV Slab: move live pages so sparse slabs empty out.

The planner proposes `PageMove`s; the executor copies the page bytes (all layers, K, V and
scales) and the engine updates the block tables, then `apply_moves` updates the allocator.
A slab is only chosen as a source if *all* its live pages fit into free pages of fuller slabs
of the same model, so every planned move helps return a whole slab to the arena.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fineserve.memory.errors import DoubleFreeError
from fineserve.memory.pool import ModelPool
from fineserve.memory.slab import SlabAllocator


@dataclass(frozen=True)
class PageMove:
    model: str
    src: int
    dst: int


def stranded_fraction(alloc: SlabAllocator) -> float:
    usage = alloc.usage()
    stranded = sum(m.free_pages_held * m.page_bytes for m in usage.models.values())
    return stranded / alloc.arena_bytes


def plan_defrag(alloc: SlabAllocator, max_moves: int | None = None) -> list[PageMove]:
    """Moves that empty the sparsest slabs of each pool (see the module docstring)."""
    moves: list[PageMove] = []
    seen: set[int] = set()
    for model in alloc.model_names:
        pool = alloc.model_pool(model)
        if id(pool) in seen:
            continue
        seen.add(id(pool))
        budget = None if max_moves is None else max_moves - len(moves)
        if budget is not None and budget <= 0:
            break
        moves.extend(_plan_pool(alloc, model, pool, budget))
    return moves


def _plan_pool(
    alloc: SlabAllocator, model: str, pool: ModelPool, budget: int | None
) -> list[PageMove]:
    partial = [u for u, n in pool.used.items() if n and pool.free[u]]
    partial.sort(key=lambda u: (pool.used[u], -u))
    sources: list[int] = []
    targets = list(reversed(partial))
    for src in partial:
        room = sum(len(pool.free[t]) for t in targets if t != src and t not in sources)
        if pool.used[src] > room or (budget is not None and pool.used[src] > budget):
            continue
        sources.append(src)
        targets = [t for t in targets if t != src]
        if budget is not None:
            budget -= pool.used[src]
    if not sources:
        return []
    source_set = set(sources)
    live = sorted(p for p in pool.owned if pool.page_unit[p] in source_set)
    free_dst = [p for t in targets for p in sorted(pool.free[t])]
    return [PageMove(alloc.owner_of(model, s), s, d) for s, d in zip(live, free_dst, strict=False)]


def apply_moves(alloc: SlabAllocator, moves: Sequence[PageMove]) -> None:
    """Record executed moves: each dst becomes owned, each src is freed. All-or-nothing."""
    srcs = [(m.model, m.src) for m in moves]
    dsts = [(id(alloc.model_pool(m.model)), m.dst) for m in moves]
    if len(set(srcs)) != len(srcs) or any(p not in alloc.owned_pages(m) for m, p in srcs):
        raise DoubleFreeError("a move's source is not a page its model holds")
    if len(set(dsts)) != len(dsts) or any(
        m.dst in alloc.model_pool(m.model).owned or m.dst not in alloc.model_pool(m.model).page_unit
        for m in moves
    ):
        raise ValueError("a move's destination is not a free page of its model's slabs")
    for move in moves:
        alloc.claim_page(move.model, move.dst)
    for model in {m.model for m in moves}:
        alloc.free(model, [m.src for m in moves if m.model == model])
