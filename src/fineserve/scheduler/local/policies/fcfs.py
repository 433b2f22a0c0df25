"""First come, first served: prefills in arrival order, every decode runs, nothing rejected."""

from __future__ import annotations

from collections.abc import Sequence as Seqs
from operator import attrgetter

from fineserve.scheduler.local.policies.base import Admission, Policy, PolicyContext
from fineserve.scheduler.local.sequence import Sequence

_ARRIVAL = attrgetter("arrival_s")


class FCFSPolicy(Policy):
    name = "fcfs"
    static_admission = True

    def admit(self, waiting: Seqs[Sequence], ctx: PolicyContext) -> Admission:
        return Admission(order=sorted(waiting, key=_ARRIVAL))
