"""Static partitioning: one fixed region per model (a vLLM instance per model).

Each model's region is its `reserve_bytes` (the benchmark passes what one request of the
longest length needs, as vLLM insists on room for `max_model_len`) plus a share of the rest in
proportion to its `demand_weight` (the benchmark passes its mean KV demand: rate x mean
token-steps x bytes per token), i.e. static partitioning with perfect knowledge of the
averages. A model can never use another's idle region.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fineserve.memory.allocator import ArenaUsage, KVAllocator, ModelKV, ModelUsage
from fineserve.memory.errors import InvalidFormatError, OutOfPagesError
from fineserve.memory.pool import ModelPool, check_free_request


def _floor_upto(models: Sequence[ModelKV], last: ModelKV) -> int:
    """Sum of reserves of the models up to and including `last`."""
    total = 0
    for m in models:
        total += m.reserve_bytes
        if m is last:
            return total
    raise AssertionError("model not in list")


class StaticAllocator(KVAllocator):
    scheme = "static"

    def __init__(self, arena_bytes: int, models: Sequence[ModelKV]) -> None:
        super().__init__(arena_bytes, models)
        total = sum(m.demand_weight for m in models)
        floors = sum(m.reserve_bytes for m in models)
        if floors > arena_bytes:
            raise InvalidFormatError(
                f"static partitions need {floors} reserved bytes, the arena has {arena_bytes}"
            )
        shared = arena_bytes - floors
        self._pools: dict[str, ModelPool] = {}
        self._region: dict[str, tuple[int, int]] = {}
        cumulative, start = 0.0, 0
        for m in models:
            cumulative += m.demand_weight
            end = min(arena_bytes, round(cumulative / total * shared) + _floor_upto(models, m))
            page = m.fmt.page_bytes
            pool = ModelPool()
            pool.add_unit(0, range(-(-start // page), end // page))
            self._pools[m.name] = pool
            self._region[m.name] = (start, end)
            start = end

    def allocate(self, model: str, n: int) -> list[int]:
        pool = self._pool(model)
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if pool.free_pages < n:
            raise OutOfPagesError(model, n, pool.free_pages)
        return pool.take(n)

    def free(self, model: str, pages: Iterable[int]) -> None:
        pool = self._pool(model)
        pool.give_back(check_free_request(model, pages, pool.owned))

    def available_pages(self, model: str) -> int:
        return self._pool(model).free_pages

    def used_pages(self, model: str) -> int:
        return len(self._pool(model).owned)

    def owned_pages(self, model: str) -> set[int]:
        return set(self._pool(model).owned)

    def usage(self) -> ArenaUsage:
        models: dict[str, ModelUsage] = {}
        edge = free = 0
        for name, pool in self._pools.items():
            fmt = self.page_format(name)
            start, end = self._region[name]
            edge += (end - start) - pool.capacity[0] * fmt.page_bytes
            # a static region's free pages can serve no other model: they are stranded
            models[name] = ModelUsage(
                used_pages=len(pool.owned),
                page_bytes=fmt.page_bytes,
                page_stride=fmt.page_bytes,
                tokens_per_page=fmt.tokens_per_page,
                bytes_per_token=fmt.bytes_per_token,
                free_pages_held=pool.free_pages,
                held_bytes=end - start,
            )
        return ArenaUsage(self.arena_bytes, models, free, edge)

    def check_internal(self) -> None:
        for pool in self._pools.values():
            pool.check()

    def _pool(self, model: str) -> ModelPool:
        self.spec(model)
        return self._pools[model]
