"""Static partitioning: one fixed region per model (a vLLM instance per model).

Each model's region is its `reserve_bytes` (the benchmark passes what one request of the
longest length needs, as vLLM insists on room for `max_model_len`) plus a share of the rest in
proportion to its `demand_weight` (the benchmark passes its mean KV demand: rate x mean
token-steps x bytes per token), i.e. static partitioning with perfect knowledge of the
averages. A model can never use another's idle region.
"""

from __future__ import annotations

from collections.abc import Sequence

from fineserve.memory.allocator import ArenaUsage, ModelKV, ModelUsage
from fineserve.memory.errors import InvalidFormatError
from fineserve.memory.pooled import PooledAllocator


def _floor_upto(models: Sequence[ModelKV], last: ModelKV) -> int:
    """Sum of reserves of the models up to and including `last`."""
    total = 0
    for m in models:
        total += m.reserve_bytes
        if m is last:
            return total
    raise AssertionError("model not in list")


class StaticAllocator(PooledAllocator):
    scheme = "static"
    # a model's available pages are its own region's free pages
    monotone_available = True
    isolated_models = True

    def __init__(self, arena_bytes: int, models: Sequence[ModelKV]) -> None:
        super().__init__(arena_bytes, models, keep_empty=1)  # the one partition stays
        total = sum(m.demand_weight for m in models)
        floors = sum(m.reserve_bytes for m in models)
        if floors > arena_bytes:
            raise InvalidFormatError(
                f"static partitions need {floors} reserved bytes, the arena has {arena_bytes}"
            )
        shared = arena_bytes - floors
        self._region: dict[str, tuple[int, int]] = {}
        cumulative, start = 0.0, 0
        for m in models:
            cumulative += m.demand_weight
            end = min(arena_bytes, round(cumulative / total * shared) + _floor_upto(models, m))
            page = m.fmt.page_bytes
            self._pools[m.name].add_unit(0, range(-(-start // page), end // page))
            self._region[m.name] = (start, end)
            start = end

    def _acquire_unit(self, model: str) -> int | None:
        return None  # a partition never grows

    def _release_unit(self, model: str, unit: int) -> None:
        raise AssertionError("a static partition is never given back")

    def available_pages(self, model: str) -> int:
        return self._pool(model).free_pages

    def usage(self) -> ArenaUsage:
        models: dict[str, ModelUsage] = {}
        edge = free = 0
        for name, pool in self._pools.items():
            fmt = self.page_format(name)
            start, end = self._region[name]
            edge += (end - start) - pool.capacity[0] * fmt.page_bytes
            # a static region's free pages can serve no other model: they are stranded
            models[name] = self._model_usage(name, end - start, pool.free_pages)
        return ArenaUsage(self.arena_bytes, models, free, edge)
