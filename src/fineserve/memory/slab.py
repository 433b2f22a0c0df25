"""KV Slab: one arena cut into fixed-size slabs, each lent to one model's page format.

Model `m` with page size `P` sees the arena as pages `0 .. arena_bytes // P`; page `p` is at
byte `p * P`. A slab lent to `m` holds the pages of `m` lying wholly inside it. A model takes
pages from its fullest partly used slab, then borrows a free slab; a slab whose pages are all
free goes back to the arena, except that each model may keep `keep_empty` empty slabs
(hysteresis) which any other model can reclaim when the arena has no free slab.

Invariants (checked by `check_integrity`): a slab is lent to at most one model; every owned
page lies in a slab lent to its owner; no byte belongs to two models' pages; a model never
borrows a slab when that would leave too few for the unmet reserves of the others.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from fineserve.memory.allocator import ArenaUsage, ModelKV, ModelUsage
from fineserve.memory.errors import InvalidFormatError
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
    ) -> None:
        super().__init__(arena_bytes, models, keep_empty)
        page_sizes = [m.fmt.page_bytes for m in models] or [1]
        self.slab_bytes = slab_bytes or choose_slab_bytes(page_sizes, arena_bytes)
        if self.slab_bytes < max(page_sizes):
            raise InvalidFormatError(
                f"slab of {self.slab_bytes} bytes is smaller than a {max(page_sizes)}-byte page"
            )
        self.num_slabs = -(-arena_bytes // self.slab_bytes)
        self._free_slabs = list(range(self.num_slabs))
        heapq.heapify(self._free_slabs)
        self._owner: dict[int, str] = {}
        self._page_bytes = {m.name: m.fmt.page_bytes for m in models}
        self._reserve_slabs = {m.name: -(-m.reserve_bytes // self.slab_bytes) for m in models}
        self.slab_borrows = 0
        self.slab_returns = 0

    # -- queries ---------------------------------------------------------------------------
    def slabs_of(self, model: str) -> list[int]:
        return sorted(self._pool(model).used)

    @property
    def free_slab_count(self) -> int:
        return len(self._free_slabs)

    def available_pages(self, model: str) -> int:
        pool = self._pool(model)
        borrowable = self._borrowable_slabs(model)
        per_slab = self.slab_bytes // self._page_bytes[model]
        return pool.free_pages + borrowable * per_slab

    # -- slabs -----------------------------------------------------------------------------
    def _borrowable_slabs(self, model: str) -> int:
        """Free slabs (or others' spare empty slabs) `model` may take without eating into
        another model's unmet reserve."""
        spare = sum(self._spare_empty_slabs(name) for name in self._pools if name != model)
        owed = sum(
            max(0, self._reserve_slabs[name] - len(p.used))
            for name, p in self._pools.items()
            if name != model
        )
        return max(0, len(self._free_slabs) + spare - owed)

    def _spare_empty_slabs(self, model: str) -> int:
        """Empty slabs `model` keeps that others may reclaim without taking its reserve."""
        pool = self._pools[model]
        above_reserve = len(pool.used) - self._reserve_slabs[model]
        return max(0, min(len(pool.empty), above_reserve))

    def _acquire_unit(self, model: str) -> int | None:
        if self._borrowable_slabs(model) < 1:
            return None
        if not self._free_slabs:
            self._reclaim_spare_slab(model)
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
        self._owner[slab] = model
        self._pools[model].add_unit(slab, pages)
        self.slab_borrows += 1
        return slab

    def _reclaim_spare_slab(self, model: str) -> None:
        for name, pool in self._pools.items():
            if name != model and self._spare_empty_slabs(name):
                self._release_unit(name, pool.empty_units()[0])
                return

    def _release_unit(self, model: str, slab: int) -> None:
        self._pools[model].remove_unit(slab)
        del self._owner[slab]
        heapq.heappush(self._free_slabs, slab)
        self.slab_returns += 1

    def release_empty_slabs(self) -> int:
        """Give every model's spare empty slabs back to the arena; returns how many."""
        count = 0
        for name, pool in self._pools.items():
            for slab in pool.empty_units():
                self._release_unit(name, slab)
                count += 1
        return count

    # -- accounting ------------------------------------------------------------------------
    def usage(self) -> ArenaUsage:
        models: dict[str, ModelUsage] = {}
        edge = 0
        free = sum(self._slab_len(s) for s in self._free_slabs)
        for name, pool in self._pools.items():
            fmt = self.page_format(name)
            held = sum(self._slab_len(s) for s in pool.used)
            page_total = sum(pool.capacity.values()) * fmt.page_bytes
            edge += held - page_total
            empty_pages = sum(pool.capacity[u] for u in pool.empty_units())
            free += empty_pages * fmt.page_bytes
            models[name] = self._model_usage(name, held, pool.stranded_pages())
        extra = {"slab_bytes": float(self.slab_bytes), "free_slabs": float(self.free_slab_count)}
        return ArenaUsage(self.arena_bytes, models, free, edge, extra)

    def _slab_len(self, slab: int) -> int:
        start = slab * self.slab_bytes
        return min(start + self.slab_bytes, self.arena_bytes) - start

    def check_internal(self) -> None:
        """Slab-specific invariants (called by `check_integrity`)."""
        lent = set(self._owner)
        assert not lent & set(self._free_slabs), "a slab is both free and lent"
        assert len(lent) + len(self._free_slabs) == self.num_slabs, "slabs lost"
        for name, pool in self._pools.items():
            pool.check()
            assert all(self._owner[s] == name for s in pool.used), "slab owner mismatch"
            assert len(pool.empty) <= self.keep_empty, "too many empty slabs kept"
