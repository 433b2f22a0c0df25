"""Precision-aware arbitration of scarce KV memory between co-located models.

When several models are short of pages, `grant_order` decides who is served first: models
still below their minimum reserve, then the least SLO slack (most urgent deadline), then the
most tokens per byte (a quantized KV cache turns the same bytes into more tokens: higher
marginal memory efficiency). `choose_victim` picks whose pages to reclaim by preemption: the
most slack, then the fewest tokens per byte, and never a model that would drop below its
reserve. Both are pure functions of their inputs; the scheduler supplies slack and demand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fineserve.memory.allocator import KVAllocator


@dataclass(frozen=True)
class MemoryDemand:
    """A model's wish for `pages` more pages; `slack_s` is time to its most urgent deadline."""

    model: str
    pages: int
    slack_s: float
    tokens_per_byte: float


@dataclass(frozen=True)
class PreemptionCandidate:
    """A running request whose `pages` could be reclaimed by preempting it."""

    model: str
    request_id: str
    pages: int
    slack_s: float
    tokens_per_byte: float


def reserve_pages(alloc: KVAllocator, model: str) -> int:
    """Pages of `model` covered by its reserve."""
    return -(-alloc.spec(model).reserve_bytes // alloc.page_format(model).page_bytes)


def below_reserve(alloc: KVAllocator, model: str) -> bool:
    return alloc.used_pages(model) < reserve_pages(alloc, model)


def grant_order(demands: Sequence[MemoryDemand], alloc: KVAllocator) -> list[MemoryDemand]:
    """Order in which waiting demands should be served (see the module docstring)."""
    return sorted(
        demands,
        key=lambda d: (not below_reserve(alloc, d.model), d.slack_s, -d.tokens_per_byte),
    )


def choose_victim(
    candidates: Sequence[PreemptionCandidate], alloc: KVAllocator
) -> PreemptionCandidate | None:
    """The request to preempt, or None if every candidate's model must keep its pages."""
    room: dict[str, int] = {}  # per model: used pages above its reserve (read once)
    allowed = []
    for c in candidates:
        r = room.get(c.model)
        if r is None:
            r = room[c.model] = alloc.used_pages(c.model) - reserve_pages(alloc, c.model)
        if c.pages <= r:
            allowed.append(c)
    if not allowed:
        return None
    return max(allowed, key=lambda c: (c.slack_s, -c.tokens_per_byte, c.pages))


def tokens_per_byte(alloc: KVAllocator, model: str) -> float:
    return 1.0 / alloc.page_format(model).bytes_per_token
