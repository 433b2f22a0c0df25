"""KV Slab: one arena cut into fixed-size slabs, each lent to one model's page format.

Model `m` with page size `P` sees the arena as pages `0 .. arena_bytes // P`; page `p` is at
byte `p * P`. A slab is lent to one page size at a time and cut into the pages of that size
lying wholly inside it. Models whose pages have the same size (an FP16 and an AWQ Llama, a
Qwen3-32B TP=2 rank: all 2 MiB) draw pages from the same slabs, since their page `p` covers
the same bytes; each page still belongs to one model only (`share_same_size=False` gives every
model slabs of its own, the paper's layout). A pool takes pages from its fullest partly used
slab, then borrows a free slab; a slab whose pages are all free goes back to the arena, except
that each pool may keep `keep_empty` empty slabs (hysteresis) which any other pool reclaims
when the arena has no free slab.

Invariants (checked by `check_integrity`): a slab is lent to at most one page size; every
owned page lies in a slab lent to its owner's pool; no byte belongs to two pages; a pool never
borrows a slab that would leave too few for the unmet reserves of the others, and a model never
takes pages that would leave a same-pool sibling unable to reach its reserve.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Sequence

from fineserve.memory.allocator import ArenaUsage, ModelKV, ModelUsage
from fineserve.memory.errors import InvalidFormatError, OutOfPagesError
from fineserve.memory.pool import ModelPool
from fineserve.memory.pooled import PooledAllocator
from fineserve.memory.slab_size import choose_slab_bytes, pages_in_slab


class SlabAllocator(PooledAllocator):
    """The FineServe KV Slab allocator (see the module docstring)."""

    scheme = "slab"

    def __init__(
        self,
        arena_bytes: int,
        models: Sequence[ModelKV],
        slab_bytes: int | None = None,
        keep_empty: int = 1,
        share_same_size: bool = True,
    ) -> None:
        keys = {m.name: (m.fmt.page_bytes if share_same_size else m.name) for m in models}
        super().__init__(arena_bytes, models, keep_empty, keys)
        page_sizes = [m.fmt.page_bytes for m in models] or [1]
        self.slab_bytes = slab_bytes or choose_slab_bytes(page_sizes, arena_bytes)
        if self.slab_bytes < max(page_sizes):
            raise InvalidFormatError(
                f"slab of {self.slab_bytes} bytes is smaller than a {max(page_sizes)}-byte page"
            )
        self.num_slabs = -(-arena_bytes // self.slab_bytes)
        self._free_slabs = list(range(self.num_slabs))
        heapq.heapify(self._free_slabs)
        self._owner: dict[int, Hashable] = {}
        self._page_bytes = {m.name: m.fmt.page_bytes for m in models}
        self._reserve_pages = {m.name: -(-m.reserve_bytes // m.fmt.page_bytes) for m in models}
        self._reserve_slabs: dict[Hashable, int] = dict.fromkeys(self._pools, 0)
        for m in models:
            self._reserve_slabs[keys[m.name]] += m.reserve_bytes
        for key, reserved in self._reserve_slabs.items():
            self._reserve_slabs[key] = -(-reserved // self.slab_bytes)
        self._reserved_siblings = {
            m.name: [k for k in self.pool_models(m.name) if k != m.name and self._reserve_pages[k]]
            for m in models
        }
        self.slab_borrows = 0
        self.slab_returns = 0

    # -- queries ---------------------------------------------------------------------------
    def slabs_of(self, model: str) -> list[int]:
        """Slabs lent to `model`'s pool (shared with same-size models)."""
        return sorted(self._pool(model).used)

    @property
    def free_slab_count(self) -> int:
        return len(self._free_slabs)

    def available_pages(self, model: str) -> int:
        pool = self._pool(model)
        reachable = pool.free_pages + self._borrowable_slabs(model) * self._pages_per_slab(model)
        if not self._reserved_siblings[model]:  # nothing owed inside the pool
            return reachable
        return max(0, reachable - self._sibling_unmet_reserve(model))

    def _pages_per_slab(self, model: str) -> int:
        return self.slab_bytes // self._page_bytes[model]

    # -- reserves --------------------------------------------------------------------------
    def _sibling_unmet_reserve(self, model: str) -> int:
        """Pages that same-pool siblings of `model` still need to reach their reserves."""
        return sum(
            max(0, self._reserve_pages[m] - len(self._owned[m]))
            for m in self._reserved_siblings[model]
        )

    def _check_reserves(self, model: str, n: int) -> None:
        if not self._reserved_siblings[model]:
            return
        unmet = self._sibling_unmet_reserve(model)
        if unmet:
            pool = self._pool(model)
            reachable = pool.free_pages + self._borrowable_slabs(model) * self._pages_per_slab(
                model
            )
            if reachable - n < unmet:
                raise OutOfPagesError(model, n, max(0, reachable - unmet))

    # -- slabs -----------------------------------------------------------------------------
    def _borrowable_slabs(self, model: str) -> int:
        """Free slabs (or other pools' spare empty slabs) `model`'s pool may take without
        eating into another pool's unmet reserve (one pass over the pools: this sits on the
        scheduler's `available_pages` path)."""
        mine = self._key[model]
        count = len(self._free_slabs)
        reserve_slabs = self._reserve_slabs
        for key, pool in self._pools.items():
            if key == mine:
                continue
            lent = len(pool.used)
            above_reserve = lent - reserve_slabs[key]
            if above_reserve > 0:
                empty = len(pool.empty)
                count += empty if empty < above_reserve else above_reserve  # spare slabs
            else:
                count += above_reserve  # slabs still owed to that pool's reserve
        return max(0, count)

    def _spare_empty_slabs(self, key: Hashable) -> int:
        """Empty slabs a pool keeps that others may reclaim without taking its reserve."""
        pool = self._pools[key]
        above_reserve = len(pool.used) - self._reserve_slabs[key]
        return max(0, min(len(pool.empty), above_reserve))

    def _acquire_unit(self, model: str) -> int | None:
        if self._borrowable_slabs(model) < 1:
            return None
        if not self._free_slabs:
            self._reclaim_spare_slab(self._key[model])
        skipped: list[int] = []
        slab = None
        while self._free_slabs:
            cand = heapq.heappop(self._free_slabs)
            pages = pages_in_slab(cand, self.slab_bytes, self.arena_bytes, self._page_bytes[model])
            if len(pages):
                slab = cand
                break
            skipped.append(cand)
        for s in skipped:
            heapq.heappush(self._free_slabs, s)
        if slab is None:
            return None
        self._owner[slab] = self._key[model]
        self._pool(model).add_unit(slab, pages)
        self.slab_borrows += 1
        return slab

    def _reclaim_spare_slab(self, mine: Hashable) -> None:
        for key, pool in self._pools.items():
            if key != mine and self._spare_empty_slabs(key):
                self._release_slab(key, pool.empty_units()[0])
                return

    def _release_unit(self, model: str, slab: int) -> None:
        self._release_slab(self._key[model], slab)

    def _release_slab(self, key: Hashable, slab: int) -> None:
        self._pools[key].remove_unit(slab)
        del self._owner[slab]
        heapq.heappush(self._free_slabs, slab)
        self.slab_returns += 1

    def release_empty_slabs(self) -> int:
        """Give every pool's spare empty slabs back to the arena; returns how many."""
        count = 0
        for key, pool in self._pools.items():
            for slab in pool.empty_units():
                self._release_slab(key, slab)
                count += 1
        return count

    # -- accounting ------------------------------------------------------------------------
    def usage(self) -> ArenaUsage:
        models: dict[str, ModelUsage] = {}
        edge = 0
        free = sum(self._slab_len(s) for s in self._free_slabs)
        for key, pool in self._pools.items():
            members = [m for m, k in self._key.items() if k == key]
            page = self._page_bytes[members[0]]
            held = sum(self._slab_len(s) for s in pool.used)
            edge += held - sum(pool.capacity.values()) * page
            free += sum(pool.capacity[u] for u in pool.empty) * page
            shares = split_by_use([len(self._owned[m]) for m in members], held, pool)
            for m, (held_m, stranded_m) in zip(members, shares, strict=True):
                models[m] = self._model_usage(m, held_m, stranded_m)
        extra = {"slab_bytes": float(self.slab_bytes), "free_slabs": float(self.free_slab_count)}
        return ArenaUsage(self.arena_bytes, models, free, edge, extra)

    def _slab_len(self, slab: int) -> int:
        start = slab * self.slab_bytes
        return min(start + self.slab_bytes, self.arena_bytes) - start

    def check_internal(self) -> None:
        """Slab-specific invariants (called by `check_integrity`)."""
        super().check_internal()
        lent = set(self._owner)
        assert not lent & set(self._free_slabs), "a slab is both free and lent"
        assert len(lent) + len(self._free_slabs) == self.num_slabs, "slabs lost"
        for key, pool in self._pools.items():
            assert all(self._owner[s] == key for s in pool.used), "slab owner mismatch"
            assert len(pool.empty) <= self.keep_empty, "too many empty slabs kept"


def split_by_use(used: list[int], held: int, pool: ModelPool) -> list[tuple[int, int]]:
    """Share a pool's held bytes and stranded pages among its models in proportion to the
    pages each uses (the first model takes the rounding remainder); the sums are exact."""
    stranded = pool.stranded_pages()
    total = sum(used)
    if total == 0:
        return [(held, stranded)] + [(0, 0)] * (len(used) - 1)
    parts = [(held * u // total, stranded * u // total) for u in used]
    rest_held = held - sum(h for h, _ in parts)
    rest_stranded = stranded - sum(s for _, s in parts)
    parts[0] = (parts[0][0] + rest_held, parts[0][1] + rest_stranded)
    return parts
