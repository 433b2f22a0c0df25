"""kvcached/Prism-style KV memory: per-model virtual KV tensors backed by 2 MiB physical pages
mapped on demand.

Each model reserves its own virtual address space: per layer one K and one V tensor. Its block
ids index those tensors, so page ids are *virtual* (two models may use the same id). Physical
memory moves in 2 MiB chunks: to grow, a model maps one chunk (or a few, for blocks wider than
a chunk) behind each of its 2 x layers tensors at once — a *granule* — which holds
`chunk_bytes // per-layer block bytes` blocks. A granule whose blocks are all free is unmapped
(with the same one-granule hysteresis as KV Slab). Every map or unmap of a chunk costs
`map_cost_s` seconds, reported for the simulator.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from fineserve.memory.allocator import ArenaUsage, ModelKV, ModelUsage
from fineserve.memory.errors import InvalidFormatError
from fineserve.memory.formats import KVFormat
from fineserve.memory.integrity import check_allocator
from fineserve.memory.pooled import PooledAllocator

CHUNK_BYTES = 2 * 1024 * 1024
DEFAULT_MAP_COST_S = 20e-6


def granule_geometry(fmt: KVFormat, chunk_bytes: int = CHUNK_BYTES) -> tuple[int, int]:
    """(chunks per granule, blocks per granule) for a model's format."""
    tensors = 2 * fmt.num_layers
    block_in_tensor = fmt.page_bytes // tensors
    chunks_per_tensor = -(-block_in_tensor // chunk_bytes)
    blocks = chunks_per_tensor * chunk_bytes // block_in_tensor
    return tensors * chunks_per_tensor, blocks


class PagedVMMAllocator(PooledAllocator):
    scheme = "paged_vmm"

    def __init__(
        self,
        arena_bytes: int,
        models: Sequence[ModelKV],
        chunk_bytes: int = CHUNK_BYTES,
        map_cost_s: float = DEFAULT_MAP_COST_S,
        keep_empty: int = 1,
    ) -> None:
        super().__init__(arena_bytes, models, keep_empty)
        self.chunk_bytes = chunk_bytes
        self.map_cost_s = map_cost_s
        self.num_chunks = arena_bytes // chunk_bytes
        self.free_chunks = self.num_chunks
        self._geometry = {m.name: granule_geometry(m.fmt, chunk_bytes) for m in models}
        if any(c > self.num_chunks for c, _ in self._geometry.values()):
            raise InvalidFormatError("the arena cannot map one granule of some model")
        self._next_ids: dict[str, list[int]] = {m.name: [] for m in models}
        self._high: dict[str, int] = dict.fromkeys(self._pools, 0)
        self.map_ops = 0
        self.map_ops_by_model: dict[str, int] = dict.fromkeys(self._pools, 0)
        self._payer: str | None = None

    def page_stride(self, model: str) -> int:
        return self.page_format(model).page_bytes

    def num_page_ids(self, model: str) -> int:
        _, blocks = self._geometry[model]
        return self.num_chunks * blocks

    def available_pages(self, model: str) -> int:
        chunks, blocks = self._geometry[self.spec(model).name]
        spare = sum(
            len(p.empty) * self._geometry[n][0] for n, p in self._pools.items() if n != model
        )
        return self._pools[model].free_pages + (self.free_chunks + spare) // chunks * blocks

    def _acquire_unit(self, model: str) -> int | None:
        chunks, blocks = self._geometry[model]
        if self.free_chunks < chunks:
            self._payer = model
            try:
                self._unmap_spare(model, chunks)
            finally:
                self._payer = None
        if self.free_chunks < chunks:
            return None
        ids = self._next_ids[model]
        if ids:
            granule = heapq.heappop(ids)
        else:
            granule = self._high[model]
            self._high[model] += 1
        self.free_chunks -= chunks
        self._count_map_ops(model, chunks)
        self._pools[model].add_unit(granule, range(granule * blocks, (granule + 1) * blocks))
        return granule

    def _unmap_spare(self, model: str, needed: int) -> None:
        for name, pool in self._pools.items():
            for granule in pool.empty_units() if name != model else ():
                if self.free_chunks >= needed:
                    return
                self._release_unit(name, granule)

    def _release_unit(self, model: str, granule: int) -> None:
        chunks, _ = self._geometry[model]
        self._pools[model].remove_unit(granule)
        heapq.heappush(self._next_ids[model], granule)
        self.free_chunks += chunks
        self._count_map_ops(self._payer or model, chunks)

    def _count_map_ops(self, payer: str, chunks: int) -> None:
        """Charge `chunks` (un)map operations to `payer`: the model whose call did them (an
        allocation that unmaps another model's spare granules pays for those too).
        Invariant: `sum(map_ops_by_model.values()) == map_ops`."""
        self.map_ops += chunks
        self.map_ops_by_model[payer] += chunks

    def usage(self) -> ArenaUsage:
        models: dict[str, ModelUsage] = {}
        edge = self.arena_bytes - self.num_chunks * self.chunk_bytes
        free = self.free_chunks * self.chunk_bytes
        for name, pool in self._pools.items():
            fmt = self.page_format(name)
            chunks, blocks = self._geometry[name]
            held = len(pool.used) * chunks * self.chunk_bytes
            edge += held - len(pool.used) * blocks * fmt.page_bytes
            free += len(pool.empty) * blocks * fmt.page_bytes
            models[name] = self._model_usage(name, held, pool.stranded_pages())
        extra = {"map_ops": float(self.map_ops), "map_seconds": self.map_ops * self.map_cost_s}
        return ArenaUsage(self.arena_bytes, models, free, edge, extra)

    def check_integrity(self) -> None:
        # page ids are virtual per model, so byte overlap between models is not a concern
        check_allocator(self, physical=False)

    def check_internal(self) -> None:
        mapped = sum(len(p.used) * self._geometry[n][0] for n, p in self._pools.items())
        assert mapped + self.free_chunks == self.num_chunks, "physical chunks lost"
        super().check_internal()
