"""The allocator interface every KV memory scheme implements (KV Slab and the baselines).

Page ids are per model: model `m`'s page `p` occupies arena bytes
`[p * page_stride(m), p * page_stride(m) + page_format(m).page_bytes)`. So each model sees the
arena as its own uniformly strided page array (see `formats.py`), whatever the scheme.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fineserve.memory.errors import InvalidFormatError, UnknownModelError
from fineserve.memory.formats import KVFormat


@dataclass(frozen=True)
class ModelKV:
    """One co-located model instance as the KV memory sees it.

    `reserve_bytes` is a floor the scheme keeps for this model whatever the others do;
    `demand_weight` is the expected share of KV demand (used by static partitioning only).
    """

    name: str
    fmt: KVFormat
    reserve_bytes: int = 0
    demand_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidFormatError("a model needs a non-empty name")
        if self.reserve_bytes < 0:
            raise InvalidFormatError(f"model {self.name!r}: reserve_bytes must be >= 0")
        if not self.demand_weight > 0:
            raise InvalidFormatError(f"model {self.name!r}: demand_weight must be > 0")


@dataclass(frozen=True)
class ModelUsage:
    """Pages of one model, as counted by its allocator."""

    used_pages: int
    page_bytes: int
    page_stride: int
    tokens_per_page: int
    bytes_per_token: int
    free_pages_held: int  # free pages inside memory lent to this model (stranded)
    held_bytes: int  # bytes lent to this model (slabs, partition, mapped chunks)


@dataclass(frozen=True)
class ArenaUsage:
    """A snapshot of how the arena's bytes are spent, in the scheme's own terms."""

    arena_bytes: int
    models: dict[str, ModelUsage]
    free_bytes: int  # bytes any model could get (free slabs, unmapped memory)
    edge_bytes: int  # bytes no page can use (slab edges, partition tails, arena tail)
    extra: dict[str, float] = field(default_factory=dict)


class KVAllocator(ABC):
    """Hands out page ids per model. Every public method either succeeds or raises and leaves
    the allocator exactly as it was."""

    scheme: str = "abstract"
    #: no allocation (by any model) ever raises any model's `available_pages`
    monotone_available: bool = False
    #: a model's `available_pages` depends only on its own allocations and frees
    isolated_models: bool = False

    def __init__(self, arena_bytes: int, models: Sequence[ModelKV]) -> None:
        if arena_bytes < 1:
            raise InvalidFormatError(f"arena_bytes must be >= 1, got {arena_bytes}")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise InvalidFormatError(f"model names must be unique, got {names}")
        self.arena_bytes = arena_bytes
        self._specs: dict[str, ModelKV] = {m.name: m for m in models}

    @property
    def model_names(self) -> list[str]:
        return list(self._specs)

    def spec(self, model: str) -> ModelKV:
        try:
            return self._specs[model]
        except KeyError:
            raise UnknownModelError(f"unknown model {model!r}") from None

    def grants_in_pieces(self, needs: Mapping[str, int]) -> bool:
        """True only if, from the current state, allocating `needs[m]` pages to each model
        `m` in pieces, in any order and interleaving, always succeeds (False: unknown; the
        default). Queries only: the allocator is unchanged."""
        return False

    def page_format(self, model: str) -> KVFormat:
        """The page format this scheme gives `model` (its tokens per page may differ)."""
        return self.spec(model).fmt

    def page_stride(self, model: str) -> int:
        """Bytes between consecutive page ids of `model` in the arena."""
        return self.page_format(model).page_bytes

    def num_page_ids(self, model: str) -> int:
        """Page ids of `model` lie in `range(num_page_ids(model))`."""
        return self.arena_bytes // self.page_stride(model)

    def pages_for_tokens(self, model: str, tokens: int) -> int:
        t = self.page_format(model).tokens_per_page
        return -(-tokens // t)

    @abstractmethod
    def allocate(self, model: str, n: int) -> list[int]:
        """Give `model` n pages, or raise OutOfPagesError having given none."""

    @abstractmethod
    def free(self, model: str, pages: Iterable[int]) -> None:
        """Return pages; raise DoubleFreeError (freeing none) if any is not held by `model`."""

    @abstractmethod
    def available_pages(self, model: str) -> int:
        """How many pages `allocate(model, n)` could give right now."""

    @abstractmethod
    def used_pages(self, model: str) -> int: ...

    @abstractmethod
    def usage(self) -> ArenaUsage: ...

    @abstractmethod
    def owned_pages(self, model: str) -> set[int]:
        """The page ids `model` holds now (a copy)."""

    def check_integrity(self) -> None:
        """Raise AssertionError if pages overlap, are owned twice, or counts do not add up."""
        from fineserve.memory.integrity import check_allocator

        check_allocator(self)
