"""Shared machinery of the schemes that lend memory to models in units (slabs, mapped
granules, static partitions) and track pages per unit with a `ModelPool`.

A subclass says how a unit is acquired for a model (`_acquire_unit`, None when none can be)
and given back (`_release_unit`); allocation, freeing with hysteresis, and per-model counts
live here once.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence

from fineserve.memory.allocator import KVAllocator, ModelKV, ModelUsage
from fineserve.memory.errors import OutOfPagesError
from fineserve.memory.pool import ModelPool, check_free_request


class PooledAllocator(KVAllocator):
    """A `KVAllocator` over per-model `ModelPool`s; a model keeps up to `keep_empty` empty
    units before giving them back."""

    def __init__(self, arena_bytes: int, models: Sequence[ModelKV], keep_empty: int) -> None:
        super().__init__(arena_bytes, models)
        self.keep_empty = keep_empty
        self._pools: dict[str, ModelPool] = {m.name: ModelPool() for m in models}

    @abstractmethod
    def _acquire_unit(self, model: str) -> int | None:
        """Lend one more unit to `model` (added to its pool); None if none can be lent."""

    @abstractmethod
    def _release_unit(self, model: str, unit: int) -> None:
        """Take back an empty unit from `model`'s pool."""

    def allocate(self, model: str, n: int) -> list[int]:
        pool = self._pool(model)
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        acquired: list[int] = []
        while pool.free_pages < n:
            unit = self._acquire_unit(model)
            if unit is None:
                for u in acquired:
                    self._release_unit(model, u)
                raise OutOfPagesError(model, n, pool.free_pages)
            acquired.append(unit)
        return pool.take(n)

    def free(self, model: str, pages: Iterable[int]) -> None:
        pool = self._pool(model)
        for unit in pool.give_back(check_free_request(model, pages, pool.owned)):
            if len(pool.empty) > self.keep_empty:
                self._release_unit(model, unit)

    def used_pages(self, model: str) -> int:
        return len(self._pool(model).owned)

    def owned_pages(self, model: str) -> set[int]:
        return set(self._pool(model).owned)

    def model_pool(self, model: str) -> ModelPool:
        """The page bookkeeping of `model` (read by the defragmentation planner)."""
        return self._pool(model)

    def _pool(self, model: str) -> ModelPool:
        self.spec(model)
        return self._pools[model]

    def _model_usage(self, model: str, held_bytes: int, stranded_pages: int) -> ModelUsage:
        fmt = self.page_format(model)
        return ModelUsage(
            used_pages=len(self._pools[model].owned),
            page_bytes=fmt.page_bytes,
            page_stride=self.page_stride(model),
            tokens_per_page=fmt.tokens_per_page,
            bytes_per_token=fmt.bytes_per_token,
            free_pages_held=stranded_pages,
            held_bytes=held_bytes,
        )

    def check_internal(self) -> None:
        for pool in self._pools.values():
            pool.check()
