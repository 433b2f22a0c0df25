"""Defragmentation planning for KV Slab: move live pages so sparse slabs empty out.

The planner proposes `PageMove`s; the executor copies the page bytes (all layers, K, V and
scales) and the engine updates the block tables, then `apply_moves` updates the allocator.
A slab is only chosen as a source if *all* its live pages fit into free pages of fuller slabs
of the same model, so every planned move helps return a whole slab to the arena.

A move budget is spent on the pools in order of their stranded bytes (most first). When a
model waits for memory (`for_model`), its own pool comes last: its stranded pages are already
pages it can take, while every slab emptied in another pool goes back to the arena for it.
The plan is deterministic (no iteration over sets of names).
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


def plan_defrag(
    alloc: SlabAllocator, max_moves: int | None = None, for_model: str | None = None
) -> list[PageMove]:
    """Moves that empty the sparsest slabs of each pool, at most `max_moves` in all, spent on
    the pools in the order of `pool_order` (see the module docstring)."""
    moves: list[PageMove] = []
    for model, pool in pool_order(alloc, for_model):
        budget = None if max_moves is None else max_moves - len(moves)
        if budget is not None and budget <= 0:
            break
        moves.extend(_plan_pool(alloc, model, pool, budget))
    return moves


def pool_order(alloc: SlabAllocator, for_model: str | None) -> list[tuple[str, ModelPool]]:
    """One (first member, pool) per pool: most stranded bytes first, ties in model order;
    the pool of `for_model` (if given) last."""
    firsts: dict[int, tuple[str, ModelPool]] = {}
    for model in alloc.model_names:
        pool = alloc.model_pool(model)
        firsts.setdefault(id(pool), (model, pool))
    mine = None if for_model is None else id(alloc.model_pool(for_model))

    def rank(item: tuple[int, tuple[int, tuple[str, ModelPool]]]) -> tuple[bool, int, int]:
        index, (pool_id, (model, pool)) = item
        stranded = pool.stranded_pages() * alloc.page_format(model).page_bytes
        return (pool_id == mine, -stranded, index)

    return [entry for _, (_, entry) in sorted(enumerate(firsts.items()), key=rank)]


def _plan_pool(
    alloc: SlabAllocator, model: str, pool: ModelPool, budget: int | None
) -> list[PageMove]:
    """Empty the sparsest partly used slabs of one pool into its fullest ones.

    Sources are taken sparsest first while their live pages still fit into the free pages
    left in the remaining partly used slabs (after the pages of earlier sources) and within
    `budget` moves, so every source empties completely."""
    partial = [u for u, n in pool.used.items() if n and pool.free[u]]
    partial.sort(key=lambda u: (pool.used[u], -u))
    room = sum(len(pool.free[u]) for u in partial)
    moves_left = budget
    sources: list[int] = []
    for src in partial:
        used = pool.used[src]
        if used > room - len(pool.free[src]) or (moves_left is not None and used > moves_left):
            continue
        sources.append(src)
        room -= used + len(pool.free[src])
        if moves_left is not None:
            moves_left -= used
    if not sources:
        return []
    source_set = set(sources)
    targets = [u for u in reversed(partial) if u not in source_set]  # fullest first
    live = sorted(p for p in pool.owned if pool.page_unit[p] in source_set)
    free_dst = [p for t in targets for p in sorted(pool.free[t])]
    assert len(live) <= len(free_dst), "defrag planned more moves than free pages"
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
    for model in dict.fromkeys(m.model for m in moves):  # first-seen order: deterministic
        alloc.free(model, [m.src for m in moves if m.model == model])
