"""The one-off cost of a step whose token count the CPU engine's kernel cache no longer holds.

The CPU engine's linear layers run through oneDNN, which builds a primitive for every GEMM shape
it meets and keeps the most recent ones (an LRU of ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, 1024
primitives by default). A step's GEMM shapes are set by its token count M (the rows through
every linear layer: the prefill tokens plus one per decode), so a step whose M is not held
pays to build its primitives again: measured on 2026-11-22 with the validation's model, a
prefill of a token count met for the first time took 3.4-4.2 ms more than the same prefill
again (17-19% of a 20 ms step; a mixed step the same, keyed on M, not on its prompts), and a
token count came back cold after 250 other token counts but not after 100 (1024 primitives / 4
GEMM shapes per token count of these Llama layers = 256 token counts). A serving run meets
hundreds of token counts (prompts of 16-199 tokens, beside 0-12 decodes), more than the cache
holds, so its prefill and mixed steps keep paying it; profile probes that repeat one shape do
not. Tables are therefore measured warm (`bench.profile.measure_point_steps` runs each timed
shape once untimed first) and the simulation charges the misses:

`KernelCache(capacity, miss_s)`: token counts held, seconds per miss (`off` when either is 0).
`KernelCacheProcess`: one simulation's LRU of token counts. `CachedCostModel(inner, process)`:
a cost model whose steps pay `miss_s` when their token count is not held (then held). Like
`noise.NoisyCostModel` it is for a simulator's executor only (its answers depend on the steps
costed before), and no H100 path uses it: the paper experiment stays deterministic.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from fineserve.costmodel.base import BatchShape, InstanceKey, inner_decode_times


@dataclass(frozen=True)
class KernelCache:
    """Capacity (distinct step token counts held) and the cost of a miss (seconds).

    Invariant: both >= 0; `off` (no charge ever) when either is 0."""

    capacity: int = 0
    miss_s: float = 0.0

    @property
    def off(self) -> bool:
        return self.capacity <= 0 or self.miss_s <= 0.0

    def as_dict(self) -> dict[str, float]:
        return {"capacity": self.capacity, "miss_s": self.miss_s}


class KernelCacheProcess:
    """The held token counts of one simulation, least recently used first."""

    def __init__(self, cache: KernelCache) -> None:
        self.cache = cache
        self._held: OrderedDict[int, None] = OrderedDict()
        self.misses = 0
        self.hits = 0

    def charge(self, tokens: int) -> float:
        """Seconds a step of `tokens` token counts pays for its kernels: `miss_s` when that
        count is not held (it is then, evicting the least recently used beyond the
        capacity), else 0.0 (and it becomes the most recently used). 0.0 when `off`."""
        c = self.cache
        if c.off or tokens <= 0:
            return 0.0
        held = self._held
        if tokens in held:
            held.move_to_end(tokens)
            self.hits += 1
            return 0.0
        held[tokens] = None
        if len(held) > c.capacity:
            held.popitem(last=False)
        self.misses += 1
        return c.miss_s


class CachedCostModel:
    """`inner`'s step times plus the kernel-cache misses of `process` (see the module
    docstring). A step's token count is its prefill tokens plus its decodes. A simulator's
    batch coster asks for a mixed step's prefill part and decode part alone right after the
    step (for its prefill fraction): those two questions are answered without a charge and
    leave the cache as it is, since no such step ran."""

    def __init__(self, inner: Any, process: KernelCacheProcess) -> None:
        self.inner = inner
        self.process = process
        self.interference = getattr(inner, "interference", None)
        self._parts: tuple[BatchShape, BatchShape] | None = None

    def supports(self, key: InstanceKey) -> bool:
        return bool(self.inner.supports(key))

    def step_time(self, key: InstanceKey, batch: BatchShape) -> float:
        t = float(self.inner.step_time(key, batch))
        parts = self._parts
        if parts is not None and batch in parts:
            # the prefill fraction's question about the mixed step just costed
            self._parts = (
                parts[0] if batch != parts[0] else BatchShape(),
                parts[1] if batch != parts[1] else BatchShape(),
            )
            return t
        self._parts = None
        if batch.is_empty:
            return t
        if batch.prefill and batch.decode_context:
            self._parts = (
                BatchShape(prefill=batch.prefill),
                BatchShape(decode_context=batch.decode_context),
            )
        return t + self.process.charge(batch.prefill_tokens + batch.num_decode)

    def decode_step_times(
        self, key: InstanceKey, contexts: tuple[int, ...] | list[int], k: int
    ) -> list[float]:
        """`step_time` of k consecutive decode iterations (iteration j: every context + j):
        all of one token count, so only the first can miss."""
        self._parts = None
        times = inner_decode_times(self.inner, key, contexts, k)
        if times and contexts:
            times[0] += self.process.charge(len(contexts))
        return times
