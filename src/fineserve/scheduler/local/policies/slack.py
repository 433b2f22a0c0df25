"""`slack`, FineServe's own policy: SAAB's early rejection and TPOT bound, plus

- earliest deadline first with a cumulative, decode-aware admission check: a new request's
  predicted TTFT is the prefill of every admitted request ahead of it plus its own, plus the
  running decodes that ride along in every one of those steps. One that would miss its
  deadline is rejected at once (or, best-effort, deferred behind every request that can still
  make it) instead of waiting until it is hopeless while delaying the others;
- an optional TPOT-aware token budget (`SlackPolicy(tpot_budget=True)`): prefill chunks are cut
  so the predicted step, decodes of every co-located model included, stays within the tightest
  TPOT SLO of the models decoding now. Off by default: where per-step overhead dominates (the
  CPU engine) small chunks cost more prefill throughput than they save in TPOT.
"""

from __future__ import annotations

from collections.abc import Sequence as Seqs

from fineserve.scheduler.local.config import REJECT, ServedModel
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

    def __init__(self, tpot_budget: bool = False) -> None:
        self.tpot_budget = tpot_budget

    def admit(self, waiting: Seqs[Sequence], ctx: PolicyContext) -> Admission:
        kept, rejected = split_unmeetable(waiting, ctx)
        kept.sort(key=lambda s: (s.best_effort, s.deadline_s, s.arrival_s))
        decode_s = ctx.predictor.batch_time({}, ctx.decodes)  # rides along in every step
        on_time: list[Sequence] = []
        late: list[Sequence] = []
        t = ctx.now
        for seq in kept:
            steps = -(-seq.pending // ctx.token_budget)
            done = t + ctx.predictor.prefill_alone(seq) + steps * decode_s
            if seq.fresh and (seq.best_effort or done > seq.deadline_s):
                if ctx.unmeetable == REJECT and not seq.best_effort:
                    rejected.append(seq)
                else:
                    seq.best_effort = True
                    late.append(seq)
                continue
            on_time.append(seq)
            t = done
        order = on_time + late
        budget = tpot_token_budget(order[0], ctx) if order and self.tpot_budget else None
        return Admission(order=order, rejected=rejected, token_budget=budget)

    def decode_limit(self, model: ServedModel, running: Seqs[Sequence], ctx: PolicyContext) -> int:
        return tpot_decode_limit(model, running, ctx)
