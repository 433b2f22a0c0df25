"""Prism-style admission: a cumulative first-come deadline check.

Requests are taken in arrival order; each one's predicted TTFT is the time to prefill it and
every admitted request ahead of it. A request whose predicted TTFT passes its deadline is
rejected (or served best-effort, by configuration), so it adds nothing to the queue behind it.
"""

from __future__ import annotations

from collections.abc import Sequence as Seqs

from fineserve.scheduler.local.config import REJECT
from fineserve.scheduler.local.policies.base import Admission, Policy, PolicyContext
from fineserve.scheduler.local.sequence import Sequence


class PrismPolicy(Policy):
    name = "prism"

    def admit(self, waiting: Seqs[Sequence], ctx: PolicyContext) -> Admission:
        order: list[Sequence] = []
        late: list[Sequence] = []
        rejected: list[Sequence] = []
        t = ctx.now
        for seq in sorted(waiting, key=lambda s: (s.best_effort, s.arrival_s)):
            alone = ctx.predictor.prefill_alone(seq)
            if seq.fresh and not seq.best_effort and t + alone > seq.deadline_s:
                if ctx.unmeetable == REJECT:
                    rejected.append(seq)
                else:
                    seq.best_effort = True
                    late.append(seq)
                continue
            t += alone
            order.append(seq)
        return Admission(order=order + late, rejected=rejected)
