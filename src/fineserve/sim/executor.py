"""The simulator's executor: step time from a cost model, tokens from a fixed stream.

Implements the engine's `Executor` protocol without torch. The token a request samples at sequence
position p is `token_stream(request_id, p)`: deterministic and the same whatever the batching,
so runs can be compared token for token. Step time is the sum over model instances of the cost
model's `step_time` for each batch's shape (co-located models run one after another), times an
optional `slowdown` factor.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from fineserve.engine.step import StepPlan, StepResult
from fineserve.scheduler.local.costs import BatchShape, CostModel, InstanceKey


def token_stream(request_id: str, position: int, vocab_size: int = 32000) -> int:
    """The deterministic token a simulated request samples at sequence position `position`."""
    return (zlib.crc32(request_id.encode()) + 7919 * (position + 1)) % vocab_size


@dataclass(frozen=True)
class LinearCostModel:
    """A small linear cost model: `fixed + per_token * tokens + per_context * context`.

    `tokens` counts prefill tokens plus one per decode; `context` sums the KV tokens attended
    to (prefill context before the chunk, decode contexts). Satisfies the `CostModel` protocol
    for every key; meant for tests and as a fallback when no profile fits.
    """

    fixed_s: float = 0.005
    per_token_s: float = 0.0001
    per_context_s: float = 0.000001

    def step_time(self, key: InstanceKey, batch: BatchShape) -> float:
        tokens = sum(n for n, _ in batch.prefill) + len(batch.decode_context)
        context = sum(c + n // 2 for n, c in batch.prefill) + sum(batch.decode_context)
        return self.fixed_s + self.per_token_s * tokens + self.per_context_s * context

    def supports(self, key: InstanceKey) -> bool:
        return True


class SimExecutor:
    """Executes plans in simulated time (see the module docstring). Stateless between steps:
    the token sampled after a chunk ending at position `end` is `token_stream(id, end)`, so a
    request recomputed after preemption samples exactly what it would have."""

    def __init__(
        self, cost_model: CostModel, vocab_size: int = 32000, slowdown: float = 1.0
    ) -> None:
        self.cost_model = cost_model
        self.vocab_size = vocab_size
        self.slowdown = slowdown
        self.steps = 0

    def execute(self, plan: StepPlan) -> StepResult:
        if plan.num_steps > 1:
            return self._execute_steps(plan)
        tokens: dict[str, int] = {}
        duration = 0.0
        vocab = self.vocab_size
        for batch in plan.batches:
            duration += self.cost_model.step_time(batch.key, batch.shape())
            positions, chunks = batch.positions, batch.token_ids
            for i, (rid, samples) in enumerate(zip(batch.request_ids, batch.samples, strict=True)):
                if samples:
                    tokens[rid] = token_stream(rid, positions[i] + len(chunks[i]), vocab)
        self.steps += 1
        return StepResult(plan.step_id, tokens, duration * self.slowdown)

    def _execute_steps(self, plan: StepPlan) -> StepResult:
        """A multi-step decode plan: its iterations one after another (contexts growing)."""
        k, vocab = plan.num_steps, self.vocab_size
        lists: dict[str, list[int]] = {}
        duration = 0.0
        for batch in plan.batches:
            for j in range(k):
                shape = BatchShape(decode_context=tuple(p + j for p in batch.positions))
                duration += self.cost_model.step_time(batch.key, shape)
            for rid, p in zip(batch.request_ids, batch.positions, strict=True):
                lists[rid] = [token_stream(rid, p + 1 + j, vocab) for j in range(k)]
        self.steps += k
        return StepResult(
            plan.step_id, {}, duration * self.slowdown, num_steps=k, token_lists=lists
        )
