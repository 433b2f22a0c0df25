"""Shared machinery of the schemes that lend memory in units (slabs, mapped granules, static
partitions) and track pages per unit with a `ModelPool`.

Each model draws pages from one pool, named by its *pool key*. By default every model has its
own pool; KV Slab gives one pool to all models whose pages have the same size, since their
pages occupy the same byte ranges of the arena. Every page is still owned by exactly one model
(`_owned`). A subclass says how a unit is acquired for a model's pool (`_acquire_unit`, None
when none can be) and given back (`_release_unit`); allocation, freeing with hysteresis, and
per-model counts live here once.

Invariants: the models' owned sets are disjoint and their union per pool is the pool's owned
set.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Hashable, Iterable, Mapping, Sequence

from fineserve.memory.allocator import KVAllocator, ModelKV, ModelUsage
from fineserve.memory.errors import OutOfPagesError
from fineserve.memory.pool import ModelPool, check_free_request


class PooledAllocator(KVAllocator):
    """A `KVAllocator` over `ModelPool`s; a pool keeps up to `keep_empty` empty units before
    giving them back."""

    def __init__(
        self,
        arena_bytes: int,
        models: Sequence[ModelKV],
        keep_empty: int,
        pool_keys: Mapping[str, Hashable] | None = None,
    ) -> None:
        super().__init__(arena_bytes, models)
        self.keep_empty = keep_empty
        self._key: dict[str, Hashable] = {
            m.name: (pool_keys[m.name] if pool_keys else m.name) for m in models
        }
        self._pools: dict[Hashable, ModelPool] = {k: ModelPool() for k in self._key.values()}
        self._owned: dict[str, set[int]] = {m.name: set() for m in models}

    @abstractmethod
    def _acquire_unit(self, model: str) -> int | None:
        """Lend one more unit to `model`'s pool; None if none can be lent."""

    @abstractmethod
    def _release_unit(self, model: str, unit: int) -> None:
        """Take back an empty unit from `model`'s pool."""

    def _check_reserves(self, model: str, n: int) -> None:
        """Raise OutOfPagesError if giving `model` n pages would starve a pool sibling's
        reserve. Pools of one model have no siblings."""

    def allocate(self, model: str, n: int) -> list[int]:
        pool = self._pool(model)
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        self._check_reserves(model, n)
        acquired: list[int] = []
        while pool.free_pages < n:
            unit = self._acquire_unit(model)
            if unit is None:
                for u in acquired:
                    self._release_unit(model, u)
                raise OutOfPagesError(model, n, pool.free_pages)
            acquired.append(unit)
        pages = pool.take(n)
        self._owned[model].update(pages)
        return pages

    def free(self, model: str, pages: Iterable[int]) -> None:
        pool = self._pool(model)
        owned = self._owned[model]
        pages = check_free_request(model, pages, owned)
        owned.difference_update(pages)
        for unit in pool.give_back(pages):
            if len(pool.empty) > self.keep_empty:
                self._release_unit(model, unit)

    def used_pages(self, model: str) -> int:
        self.spec(model)
        return len(self._owned[model])

    def owned_pages(self, model: str) -> set[int]:
        self.spec(model)
        return set(self._owned[model])

    def model_pool(self, model: str) -> ModelPool:
        """The pool `model` draws from (shared with same-key models; read by defrag)."""
        return self._pool(model)

    def claim_page(self, model: str, page: int) -> None:
        """Give `model` one specific free page of its pool (a defragmentation destination)."""
        pool = self._pool(model)
        if page in pool.owned or page not in pool.page_unit:
            raise ValueError(f"page {page} is not a free page of the pool of {model!r}")
        pool.take_specific(page)
        self._owned[model].add(page)

    def pool_models(self, model: str) -> list[str]:
        """Every model drawing from `model`'s pool (itself included)."""
        key = self._key[self.spec(model).name]
        return [m for m, k in self._key.items() if k == key]

    def owner_of(self, model: str, page: int) -> str:
        """The model of `model`'s pool that owns `page` (KeyError if none)."""
        for m in self.pool_models(model):
            if page in self._owned[m]:
                return m
        raise KeyError(f"page {page} is not owned in the pool of {model!r}")

    def _pool(self, model: str) -> ModelPool:
        try:
            return self._pools[self._key[model]]
        except KeyError:
            self.spec(model)  # raises UnknownModelError
            raise

    def _model_usage(self, model: str, held_bytes: int, stranded_pages: int) -> ModelUsage:
        fmt = self.page_format(model)
        return ModelUsage(
            used_pages=len(self._owned[model]),
            page_bytes=fmt.page_bytes,
            page_stride=self.page_stride(model),
            tokens_per_page=fmt.tokens_per_page,
            bytes_per_token=fmt.bytes_per_token,
            free_pages_held=stranded_pages,
            held_bytes=held_bytes,
        )

    def check_internal(self) -> None:
        for key, pool in self._pools.items():
            pool.check()
            members = [self._owned[m] for m, k in self._key.items() if k == key]
            assert sum(len(s) for s in members) == len(pool.owned), "a page owned twice"
            assert set().union(*members) == pool.owned, "pool and model ownership differ"
