"""`slack`, FineServe's own policy: SAAB's early rejection and TPOT bound, plus

- earliest deadline first with a cumulative, decode-aware admission check: a new request's
  predicted TTFT is the prefill of every admitted request ahead of it plus its own, plus the
  running decodes that ride along in every one of those steps. One that would miss its
  deadline is rejected at once (or, best-effort, deferred behind every request that can still
  make it) instead of waiting until it is hopeless while delaying the others;
- an optional TPOT-aware token budget (`SlackPolicy(tpot_budget=True)`): prefill chunks are cut
  so the predicted step, decodes of every co-located model included, stays within the tightest
  TPOT SLO of the models decoding now. Off by default: where per-step overhead dominates (the
  CPU engine) small chunks cost more prefill throughput than they save in TPOT;
- an optional fewest-misses admission (`SlackPolicy(fewest_misses=True)`, Moore-Hodgson): in
  the same earliest-deadline walk, when a request would finish past its deadline, the fresh
  request with the longest prefill among those admitted so far (itself included) is the one
  given up, not necessarily the late one. Its queue model is chunked prefill's: the queue
  ahead is packed into full token-budget steps (a request costs its share of a full step with
  the running decodes), not one step per request, so short prompts that share a step are not
  turned away at low load. On one server with known service times this
  order maximises the number of requests that meet their deadlines (Moore 1968), which is what
  SLO attainment counts; giving up one long prompt lets several short ones behind it make it.
  Requests already started (partly prefilled, preempted) are never given up. Off by default.

Both walks cost the queue at `PolicyContext.slowdown`: when the engine's other lanes are in
flight on the same GPU (step lanes, `LocalScheduler(interference=...)`), this lane's steps run
that much slower, and a queue costed as if the GPU were its own admits requests that then
miss (in `paper` at 240 req/s this alone moved fineserve_plus from 0.60 to 0.77 attainment).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from collections.abc import Sequence as Seqs
from dataclasses import dataclass

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

    def __init__(
        self, tpot_budget: bool = False, fewest_misses: bool = False, lookahead: bool = False
    ) -> None:
        if lookahead and not fewest_misses:
            raise ValueError("lookahead admission needs fewest_misses=True")
        self.tpot_budget = tpot_budget
        self.fewest_misses = fewest_misses
        self.lookahead = lookahead
        self.uses_forecast = lookahead

    def admit(self, waiting: Seqs[Sequence], ctx: PolicyContext) -> Admission:
        kept, rejected = split_unmeetable(waiting, ctx)
        kept.sort(key=lambda s: (s.best_effort, s.deadline_s, s.arrival_s))
        if self.fewest_misses:
            on_time, given_up = _fewest_misses(kept, ctx, self.lookahead)
        else:
            on_time, given_up = _cumulative(kept, ctx)
        late: list[Sequence] = []
        for seq in given_up:
            if ctx.unmeetable == REJECT and not seq.best_effort:
                rejected.append(seq)
            else:
                seq.best_effort = True
                late.append(seq)
        order = on_time + late
        budget = tpot_token_budget(order[0], ctx) if order and self.tpot_budget else None
        return Admission(order=order, rejected=rejected, token_budget=budget)

    def decode_limit(self, model: ServedModel, running: Seqs[Sequence], ctx: PolicyContext) -> int:
        return tpot_decode_limit(model, running, ctx)


def _cost_s(seq: Sequence, ctx: PolicyContext, decode_s: float) -> float:
    """Predicted seconds `seq`'s prefill adds to the queue: its prefill alone plus the running
    decodes that ride along in each of its steps, slowed by the lanes beside it."""
    steps = -(-seq.pending // ctx.token_budget)
    return (ctx.predictor.prefill_alone(seq) + steps * decode_s) * ctx.slowdown


def _cumulative(kept: list[Sequence], ctx: PolicyContext) -> tuple[list[Sequence], list[Sequence]]:
    """Earliest deadline first; a fresh request that would finish past its deadline behind the
    ones ahead (or is already best-effort) is given up. Returns (on time, given up), both in
    deadline order."""
    decode_s = ctx.predictor.batch_time({}, ctx.decodes)  # rides along in every step
    on_time: list[Sequence] = []
    given_up: list[Sequence] = []
    t = ctx.now
    for seq in kept:
        done = t + _cost_s(seq, ctx, decode_s)
        if seq.fresh and (seq.best_effort or done > seq.deadline_s):
            given_up.append(seq)
            continue
        on_time.append(seq)
        t = done
    return on_time, given_up


def _fewest_misses(
    kept: list[Sequence], ctx: PolicyContext, lookahead: bool = False
) -> tuple[list[Sequence], list[Sequence]]:
    """Moore-Hodgson over the earliest-deadline order: add each request; when the last one
    admitted would finish past its deadline, give up the admitted fresh request with the
    largest cost (among equals an expected arrival before a request that is here, then the
    first in deadline order; if none is fresh, keep going: started work is never dropped).

    Cost model: chunked prefill packs the queue into full steps, so a request adds its share of
    a full step (`pending / token_budget` of a step with a full chunk and the running decodes,
    `_full_step_s`); it cannot finish before its own prefill alone.

    `lookahead`: the walk also holds the requests each model is expected to send within one
    SLO from now (`_expected_arrivals`, from `PolicyContext.forecast`), each at the mean
    prompt's cost. They take part like fresh requests but are never admitted or
    rejected themselves; a real request given up for them is one whose prefill would crowd
    out more of the requests about to arrive than it is worth (in overload the window to a
    loose deadline is long, and without this the walk fills it with whatever came first).

    Invariant: every request is in exactly one of the two lists; the on-time list keeps the
    deadline order, the given-up one the order they were given up in."""
    given_up: list[Sequence] = [s for s in kept if s.fresh and s.best_effort]
    walk = [s for s in kept if not (s.fresh and s.best_effort)]
    full: dict[str, float] = {}

    def full_step(model: str) -> float:
        if model not in full:
            full[model] = _full_step_s(model, ctx) * ctx.slowdown
        return full[model]

    items: list[_Item] = [
        _Item((s.best_effort, s.deadline_s, s.arrival_s),
              full_step(s.model) * s.pending / ctx.token_budget, s)
        for s in walk
    ]  # fmt: skip
    if lookahead and walk:
        expected = _expected_arrivals(ctx, full_step)
        if expected:
            items = list(heapq.merge(items, expected, key=lambda i: i.key))
    # droppable admitted items: largest cost first, then expected arrivals before requests
    worst: list[tuple[float, bool, int, _Item]] = []
    t = ctx.now
    for n, item in enumerate(items):
        seq = item.seq
        if seq is None or seq.fresh:
            heapq.heappush(worst, (-item.cost, seq is not None, n, item))
        t += item.cost
        alone = ctx.now + ctx.predictor.prefill_alone(seq) if seq is not None else t
        if max(t, alone) > item.deadline and worst:
            drop = heapq.heappop(worst)[-1]
            drop.dropped = True
            t -= drop.cost
            if drop.seq is not None:
                given_up.append(drop.seq)
    on_time = [i.seq for i in items if i.seq is not None and not i.dropped]
    return on_time, given_up


@dataclass(slots=True, eq=False)
class _Item:
    """One request of the Moore-Hodgson walk (`seq` None: an expected arrival)."""

    key: tuple[bool, float, float]  # the walk's order: (best effort, deadline, arrival)
    cost: float
    seq: Sequence | None
    dropped: bool = False

    @property
    def deadline(self) -> float:
        return self.key[1]


MAX_EXPECTED = 1024  # expected arrivals in one walk, at most
# expected arrivals are those within this many TTFT SLOs from now (40 s `paper` runs: 0.5
# did worse at 480 req/s SLO x5 and 240 x10, better at 480 x10; 2 did worse; replaying the
# recent prompt lengths instead of their mean did worse)
LOOKAHEAD_SLOS = 1.0


def _expected_arrivals(ctx: PolicyContext, full_step: Callable[[str], float]) -> list[_Item]:
    """The requests each lane model is expected to send within `LOOKAHEAD_SLOS` TTFT SLOs
    from `now` (`ctx.forecast`: at its rate, evenly spaced, prompts of the mean length), in
    the walk's order. One SLO ahead mirrors the queue, which holds the last SLO's arrivals."""
    out: list[_Item] = []
    for model, fc in ctx.forecast.items():
        slo = ctx.models[model].ttft_slo_s
        if fc.rate <= 0 or slo is None:
            continue
        cost = full_step(model) * fc.mean_prompt / ctx.token_budget
        gap = 1.0 / fc.rate
        arrival = ctx.now + gap
        while arrival <= ctx.now + LOOKAHEAD_SLOS * slo and len(out) < MAX_EXPECTED:
            out.append(_Item((False, arrival + slo, arrival), cost, None))
            arrival += gap
    out.sort(key=lambda i: i.key)
    return out


def _full_step_s(model: str, ctx: PolicyContext) -> float:
    """Predicted step with a full prefill chunk of `model` beside the running decodes."""
    return ctx.predictor.batch_time({model: [(ctx.token_budget, 0)]}, ctx.decodes)
