"""Latency predictions the policies use, from a `CostModel` (pure arithmetic, no clock)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fineserve.scheduler.local.config import ServedModel
from fineserve.scheduler.local.costs import BatchShape, CostModel
from fineserve.scheduler.local.sequence import Sequence as Seq


class Predictor:
    """Predicts step, prefill and decode times of the served models.

    Prefill chunks are `token_budget` tokens at most, as the scheduler cuts them.
    """

    def __init__(
        self, cost_model: CostModel, models: Mapping[str, ServedModel], token_budget: int
    ) -> None:
        self.cost_model = cost_model
        self.models = models
        self.token_budget = token_budget

    def step_time(self, model: str, shape: BatchShape) -> float:
        if not shape.prefill and not shape.decode_context:
            return 0.0
        return self.cost_model.step_time(self.models[model].key, shape)

    def prefill_alone(self, seq: Seq) -> float:
        """Time to feed the pending tokens of `seq` with nothing else running (cached)."""
        if seq.prefill_alone_s is None:
            total, done, left = 0.0, seq.num_computed, seq.pending
            while left > 0:
                chunk = min(left, self.token_budget)
                total += self.step_time(seq.model, BatchShape(prefill=((chunk, done),)))
                done += chunk
                left -= chunk
            seq.prefill_alone_s = total
        return seq.prefill_alone_s

    def batch_time(
        self,
        chunks: Mapping[str, Sequence[tuple[int, int]]],
        decodes: Mapping[str, Sequence[int]],
    ) -> float:
        """One step running `chunks` (per model, (new_tokens, context)) beside `decodes`."""
        total = 0.0
        for model in set(chunks) | set(decodes):
            shape = BatchShape(
                prefill=tuple(chunks.get(model, ())),
                decode_context=tuple(decodes.get(model, ())),
            )
            total += self.step_time(model, shape)
        return total

    def max_decodes_within(self, model: str, contexts: Sequence[int], limit_s: float) -> int:
        """Largest n such that decoding the first n of `contexts` takes at most `limit_s`
        (at least 1 when there is any, so a model always progresses)."""
        lo, hi = 1, len(contexts)
        if hi == 0:
            return 0
        shape = BatchShape(decode_context=tuple(contexts))
        if self.step_time(model, shape) <= limit_s:
            return hi
        while lo < hi:
            mid = (lo + hi + 1) // 2
            shape = BatchShape(decode_context=tuple(contexts[:mid]))
            if self.step_time(model, shape) <= limit_s:
                lo = mid
            else:
                hi = mid - 1
        return lo
