"""SAAB, the FineServe paper's SLO-aware adaptive batching.

- TTFT deadline = arrival + TTFT SLO. A new request that cannot meet it even alone is rejected
  early (or served best-effort, by configuration).
- Candidates go earliest deadline first into a batch of about one token budget; while the
  batch's predicted time to first token of its earliest-deadline request passes that deadline,
  the longest prompt is held back. Only the batch runs this step; the rest wait.
- Decodes of a model with a TPOT SLO are bounded so the predicted decode step stays within it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as Seqs

from fineserve.scheduler.local.config import ServedModel
from fineserve.scheduler.local.policies.base import (
    Admission,
    Policy,
    PolicyContext,
    split_unmeetable,
    tpot_decode_limit,
)
from fineserve.scheduler.local.sequence import Sequence


def batch_first_token_s(batch: Seqs[Sequence], ctx: PolicyContext) -> float:
    """Predicted time until `batch[0]` (earliest deadline, served first) gets its first token:
    the steps its own prefill needs, each as long as a step running the whole batch."""
    chunks: dict[str, list[tuple[int, int]]] = {}
    left = ctx.token_budget
    for seq in batch:
        take = min(seq.pending, left)
        if take <= 0:
            break
        chunks.setdefault(seq.model, []).append((take, seq.num_computed))
        left -= take
    steps = math.ceil(batch[0].pending / ctx.token_budget)
    return steps * ctx.predictor.batch_time(chunks, ctx.decodes)


def hold_back_longest(batch: list[Sequence], ctx: PolicyContext) -> None:
    """Drop (in place) the longest prompt while the batch would miss its earliest deadline;
    the earliest-deadline request itself always stays."""
    while len(batch) > 1 and ctx.now + batch_first_token_s(batch, ctx) > batch[0].deadline_s:
        batch.remove(max(batch[1:], key=lambda s: s.pending))


class SAABPolicy(Policy):
    name = "saab"

    def admit(self, waiting: Seqs[Sequence], ctx: PolicyContext) -> Admission:
        kept, rejected = split_unmeetable(waiting, ctx)
        kept.sort(key=lambda s: (s.best_effort, s.deadline_s, s.arrival_s))
        batch: list[Sequence] = []
        tokens = 0
        for seq in kept:
            if tokens >= ctx.token_budget:
                break
            if not ctx.can_start(seq):
                continue  # no pages (or too many running) for it now: do not let it block
            batch.append(seq)
            tokens += seq.pending
        hold_back_longest(batch, ctx)
        return Admission(order=batch, rejected=rejected)

    def decode_limit(self, model: ServedModel, running: Seqs[Sequence], ctx: PolicyContext) -> int:
        return tpot_decode_limit(model, running, ctx)
