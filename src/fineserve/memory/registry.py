"""Registry of KV memory schemes: KV Slab and the baselines, one constructor signature."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fineserve.memory.allocator import KVAllocator, ModelKV
from fineserve.memory.baselines.paged_vmm import PagedVMMAllocator
from fineserve.memory.baselines.static import StaticAllocator
from fineserve.memory.baselines.uniform import UniformAllocator
from fineserve.memory.errors import InvalidFormatError
from fineserve.memory.slab import SlabAllocator


def _uniform(arena: int, models: Sequence[ModelKV], **kw: Any) -> KVAllocator:
    return UniformAllocator(arena, models, pack_tokens=False, **kw)


def _uniform_bytes(arena: int, models: Sequence[ModelKV], **kw: Any) -> KVAllocator:
    return UniformAllocator(arena, models, pack_tokens=True, **kw)


SCHEMES: dict[str, Callable[..., KVAllocator]] = {
    "slab": SlabAllocator,
    "static": StaticAllocator,
    "uniform": _uniform,
    "uniform_bytes": _uniform_bytes,
    "paged_vmm": PagedVMMAllocator,
}


def make_allocator(
    scheme: str, arena_bytes: int, models: Sequence[ModelKV], **options: Any
) -> KVAllocator:
    """Build the allocator of `scheme` (one of `SCHEMES`) over an arena of `arena_bytes`."""
    try:
        factory = SCHEMES[scheme]
    except KeyError:
        raise InvalidFormatError(
            f"unknown KV memory scheme {scheme!r}; choose one of {sorted(SCHEMES)}"
        ) from None
    if not models:
        raise InvalidFormatError("an allocator needs at least one model")
    return factory(arena_bytes, list(models), **options)
