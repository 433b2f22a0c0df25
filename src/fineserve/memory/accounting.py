"""Where the arena's bytes go, in one place for metrics, the scheduler and benchmarks.

`account(usage, live_tokens)` splits the arena into disjoint categories that add up to it:

    live      bytes holding the KV of live tokens
    tail      bytes of allocated pages past each sequence's last token
    internal  bytes of an allocated block beyond the model's own page (uniform block schemes)
    stranded  free pages inside memory lent to a model that also holds live pages
    edge      bytes no page can use (slab edges, partition tails, chunk remainders)
    free      bytes any model could get now (free slabs, spare empty slabs, unmapped memory)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from fineserve.memory.allocator import ArenaUsage


@dataclass(frozen=True)
class Accounting:
    arena_bytes: int
    live_bytes: int
    tail_bytes: int
    internal_bytes: int
    stranded_bytes: int
    edge_bytes: int
    free_bytes: int

    @property
    def total(self) -> int:
        return (
            self.live_bytes
            + self.tail_bytes
            + self.internal_bytes
            + self.stranded_bytes
            + self.edge_bytes
            + self.free_bytes
        )

    def fraction(self, name: str) -> float:
        return getattr(self, f"{name}_bytes") / self.arena_bytes

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def account(usage: ArenaUsage, live_tokens: Mapping[str, int] | None = None) -> Accounting:
    """Split the arena (see the module docstring). `live_tokens[m]` is the number of tokens
    whose KV model `m` holds; without it, every allocated page counts as live."""
    live = tail = internal = stranded = 0
    for name, m in usage.models.items():
        page_payload = m.tokens_per_page * m.bytes_per_token
        allocated = m.used_pages * page_payload
        model_live = (
            allocated if live_tokens is None else live_tokens.get(name, 0) * m.bytes_per_token
        )
        if model_live > allocated:
            raise ValueError(
                f"model {name!r}: {model_live} live bytes exceed {allocated} allocated"
            )
        live += model_live
        tail += allocated - model_live
        internal += m.used_pages * (m.page_bytes - page_payload)
        stranded += m.free_pages_held * m.page_bytes
    held_by_models = sum(m.held_bytes for m in usage.models.values())
    edge = usage.edge_bytes
    free = usage.free_bytes
    result = Accounting(usage.arena_bytes, live, tail, internal, stranded, edge, free)
    unassigned = usage.arena_bytes - result.total
    if unassigned < 0 or held_by_models > usage.arena_bytes:
        raise AssertionError(
            f"accounting overflows the arena: {result.as_dict()} (held {held_by_models})"
        )
    return result
