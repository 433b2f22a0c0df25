"""One block size for every model (MuxServe-style unified KV pool).

The block is the largest co-located page. `uniform`: each model keeps its own tokens per page,
so a smaller page wastes the rest of its block (internal fragmentation). `uniform_bytes`: each
model packs as many of its tokens as fit in the block (the best a uniform design can do).
Block `b` is at arena byte `b * block_bytes` for every model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from fineserve.memory.allocator import ArenaUsage, KVAllocator, ModelKV, ModelUsage
from fineserve.memory.errors import InvalidFormatError, OutOfPagesError
from fineserve.memory.formats import KVFormat
from fineserve.memory.pool import check_free_request


class UniformAllocator(KVAllocator):
    scheme = "uniform"
    # an allocation takes n free blocks and lowers the others' debt by at most n
    monotone_available = True

    def __init__(
        self, arena_bytes: int, models: Sequence[ModelKV], pack_tokens: bool = False
    ) -> None:
        super().__init__(arena_bytes, models)
        self.pack_tokens = pack_tokens
        if pack_tokens:
            self.scheme = "uniform_bytes"
        self.block_bytes = max(m.fmt.page_bytes for m in models)
        num_blocks = arena_bytes // self.block_bytes
        if num_blocks < 1:
            raise InvalidFormatError(f"arena cannot hold one {self.block_bytes}-byte block")
        self._free = list(range(num_blocks - 1, -1, -1))
        self._num_blocks = num_blocks
        self._owned: dict[str, set[int]] = {m.name: set() for m in models}
        self._formats = {m.name: self._format_for(m.fmt) for m in models}
        self._reserve = {m.name: -(-m.reserve_bytes // self.block_bytes) for m in models}
        # sum over models of max(0, reserve - owned): kept up to date by allocate/free, so
        # `available_pages` is O(1) (it is called for every admission check and grant)
        self._owed_total = sum(self._reserve.values())

    def _format_for(self, fmt: KVFormat) -> KVFormat:
        if not self.pack_tokens:
            return fmt
        return fmt.with_tokens_per_page(self.block_bytes // fmt.bytes_per_token)

    def page_format(self, model: str) -> KVFormat:
        self.spec(model)
        return self._formats[model]

    def page_stride(self, model: str) -> int:
        self.spec(model)
        return self.block_bytes

    def available_pages(self, model: str) -> int:
        """Free blocks less what the other models are still owed of their reserves
        (`_owed_total` less `model`'s own share; an unknown model owes nothing)."""
        owed = self._owed_total
        pages = self._owned.get(model)
        if pages is not None:
            owed -= max(0, self._reserve[model] - len(pages))
        return max(0, len(self._free) - owed)

    def grants_in_pieces(self, needs: Mapping[str, int]) -> bool:
        """Whether the free blocks left after all of `needs` still cover every model's unmet
        reserve then. That suffices: an allocation of a to m succeeds iff the blocks free
        after it cover the other models' debt D_-m. At any point of any interleaving, the
        free blocks after the piece are the final free F plus the rest R still to allocate
        (R_-m of it to other models), and D_-m then is at most their final debt plus R_-m
        (a block lowers a debt by at most one): F >= D_final >= D_-m,final gives it."""
        if any(n < 0 for n in needs.values()) or not set(needs) <= set(self._owned):
            return False
        left = len(self._free) - sum(needs.values())
        debt = sum(
            max(0, self._reserve[m] - len(pages) - needs.get(m, 0))
            for m, pages in self._owned.items()
        )
        return left >= debt

    def _owed(self, model: str) -> int:
        return max(0, self._reserve[model] - len(self._owned[model]))

    def allocate(self, model: str, n: int) -> list[int]:
        available = self.available_pages(model)
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if available < n:
            raise OutOfPagesError(model, n, available)
        free = self._free
        got = free[len(free) - n :]
        del free[len(free) - n :]
        before = self._owed(model)
        self._owned[model].update(got)
        self._owed_total += self._owed(model) - before
        return got

    def free(self, model: str, pages: Iterable[int]) -> None:
        owned = self._owned_of(model)
        pages = check_free_request(model, pages, owned)
        before = self._owed(model)
        owned.difference_update(pages)
        self._owed_total += self._owed(model) - before
        self._free.extend(pages)

    def used_pages(self, model: str) -> int:
        return len(self._owned_of(model))

    def owned_pages(self, model: str) -> set[int]:
        return set(self._owned_of(model))

    def usage(self) -> ArenaUsage:
        models = {
            name: ModelUsage(
                used_pages=len(pages),
                page_bytes=self.block_bytes,
                page_stride=self.block_bytes,
                tokens_per_page=self._formats[name].tokens_per_page,
                bytes_per_token=self._formats[name].bytes_per_token,
                free_pages_held=0,
                held_bytes=len(pages) * self.block_bytes,
            )
            for name, pages in self._owned.items()
        }
        edge = self.arena_bytes - self._num_blocks * self.block_bytes
        return ArenaUsage(self.arena_bytes, models, len(self._free) * self.block_bytes, edge)

    def check_internal(self) -> None:
        all_owned = [p for pages in self._owned.values() for p in pages]
        assert len(set(all_owned)) == len(all_owned), "a block is owned twice"
        assert not set(all_owned) & set(self._free), "a block is both free and owned"
        assert len(all_owned) + len(self._free) == self._num_blocks, "blocks lost"
        owed = sum(self._owed(name) for name in self._owned)
        assert owed == self._owed_total, "reserve debt out of date"

    def _owned_of(self, model: str) -> set[int]:
        self.spec(model)
        return self._owned[model]
