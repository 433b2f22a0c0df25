"""`slack`, FineServe's own policy: SAAB's early rejection and TPOT bound, plus

- earliest deadline first with a cumulative check: a request that would miss its deadline
  behind the ones ahead of it is deferred (served after every request that can still make it)
  instead of slowing them all down;
- a TPOT-aware token budget: prefill chunks are cut so the predicted step, decodes of every
  co-located model included, stays within the tightest TPOT SLO of the models decoding now.
"""

from __future__ import annotations

from collections.abc import Sequence as Seqs

from fineserve.scheduler.local.config import ServedModel
from fineserve.scheduler.local.costs import BatchShape
from fineserve.scheduler.local.policies.base import (
    Admission,
    Policy,
    PolicyContext,
    split_unmeetable,
    tpot_decode_limit,
)
from fineserve.scheduler.local.sequence import Sequence

MIN_CHUNK = 32  # prefill always progresses by at least this many tokens per step


def tpot_token_budget(first: Sequence, ctx: PolicyContext) -> int:
    """Largest prefill chunk for `first`'s model that keeps the step within the tightest TPOT
    SLO of the models with decodes in this step (the whole budget when none has one)."""
    limits = [
        ctx.models[m].tpot_slo_s
        for m, contexts in ctx.decodes.items()
        if contexts and ctx.models[m].tpot_slo_s is not None
    ]
    if not limits:
        return ctx.token_budget
    limit = min(limits)  # type: ignore[type-var]
    base = ctx.predictor.batch_time({}, ctx.decodes)
    lo, hi = MIN_CHUNK, ctx.token_budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        shape = BatchShape(prefill=((mid, first.num_computed),))
        if base + ctx.predictor.step_time(first.model, shape) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


class SlackPolicy(Policy):
    name = "slack"

    def admit(self, waiting: Seqs[Sequence], ctx: PolicyContext) -> Admission:
        kept, rejected = split_unmeetable(waiting, ctx)
        kept.sort(key=lambda s: (s.best_effort, s.deadline_s, s.arrival_s))
        on_time: list[Sequence] = []
        late: list[Sequence] = []
        t = ctx.now
        for seq in kept:
            alone = ctx.predictor.prefill_alone(seq)
            if not seq.fresh or (not seq.best_effort and t + alone <= seq.deadline_s):
                on_time.append(seq)
                t += alone
            else:
                late.append(seq)
        order = on_time + late
        budget = tpot_token_budget(order[0], ctx) if order else ctx.token_budget
        return Admission(order=order, rejected=rejected, token_budget=budget)

    def decode_limit(self, model: ServedModel, running: Seqs[Sequence], ctx: PolicyContext) -> int:
        return tpot_decode_limit(model, running, ctx)
