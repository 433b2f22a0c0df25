"""The local scheduler: continuous batching with chunked prefill over all co-located models.

Every step (`schedule(now)`): decodes first (models in order of SLO slack, each bounded by the
policy's decode limit), then prefill chunks in the policy's order within the step's token
budget. Pages come from the allocator through `PageBroker`; when memory runs out a victim chosen
by precision-aware arbitration is preempted by recompute. `update(plan, result, now)` applies
the sampled tokens and returns the streamed outputs.

Invariant: a request appears at most once in a plan, and every chunk's tokens fit in its page
table. Queues, submission, abort and `update` live in `state.py`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from collections.abc import Sequence as Seqs
from dataclasses import dataclass
from itertools import chain, repeat
from operator import itemgetter, mod, sub
from typing import ClassVar

from fineserve.engine.step import REJECTED, ModelBatch, StepPlan
from fineserve.memory.allocator import KVAllocator
from fineserve.memory.errors import OutOfPagesError
from fineserve.scheduler.local.config import SchedulerConfig, ServedModel
from fineserve.scheduler.local.costs import CostModel, InstanceKey, InterferenceModel
from fineserve.scheduler.local.policies import Policy, PolicyContext, make_policy
from fineserve.scheduler.local.predict import Predictor
from fineserve.scheduler.local.sequence import Sequence, Status
from fineserve.scheduler.local.state import DecodeCols, Lane, SchedulerState, SchedulerStats

RUNNING = Status.RUNNING
_last = itemgetter(slice(-1, None))  # tokens[-1:], the token a decode feeds


@dataclass(slots=True)
class _Build:
    """One model's part of the plan being built (each batch made when it gets an entry)."""

    key: InstanceKey
    prefill: ModelBatch | None = None
    decode: ModelBatch | None = None


class LocalScheduler(SchedulerState):
    """Per-GPU scheduler over every co-located model (see the module docstring)."""

    #: exact shortcuts on (tests turn them off to compare with the plain path): the admission
    #: memo of a prefill pass (`_can_start`) and the early stop of `_grant_one_each`
    shortcuts: ClassVar[bool] = True

    def __init__(
        self,
        models: Seqs[ServedModel],
        allocator: KVAllocator,
        cost_model: CostModel,
        policy: Policy | str = "saab",
        config: SchedulerConfig | None = None,
        interference: InterferenceModel | None = None,
    ) -> None:
        """`interference`: how co-located steps slow each other; given, a lane's plan is made
        knowing the engine's other lanes in flight and `neighbours_in_flight`, the steps of
        other engines on its GPUs (`PolicyContext.slowdown`)."""
        super().__init__(models, allocator, config)
        self.interference = interference
        # steps of other engines in flight on this engine's GPUs, as its host last saw them
        # (set before `schedule`; with `interference`, they slow a lane's queue as its own
        # lanes in flight do)
        self.neighbours_in_flight = 0
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.predictor = Predictor(cost_model, self.models, self.config.token_budget)
        self._step_id = 0
        self._all_models = frozenset(self.models)
        self._names = list(self.models)  # the served models, in order (a whole-engine lane)
        # the policy never limits decodes (`Policy.decode_limit`: every one runs)
        self._all_decodes_run = type(self.policy).decode_limit is Policy.decode_limit
        self._all_lane = True  # the plan being built covers every model
        # during a prefill pass: per model [running count, available pages or None], valid
        # until the pass changes running sequences or pages (then cleared); None outside one
        self._admit_memo: dict[str, list[int | None]] | None = None
        # the last prefill pass had candidates and refused every one at `_can_start` (all
        # waiting, a policy with static admission, no rejection): see `_blocked`
        self._refused_all = False
        # `_admission_state` when the last prefill pass checked every candidate (all waiting)
        # and `_can_start` refused each one, with a policy of static admission; else None
        self._refused_state: tuple[object, ...] | None = None
        # per lane (its `models` argument), the `state_version` of its last plan when that
        # plan was empty and changed nothing under a static policy (see `parked`)
        self._parked: dict[frozenset[str] | None, int] = {}

    # -- planning ----------------------------------------------------------------------------
    def schedule(
        self,
        now: float,
        models: frozenset[str] | None = None,
        max_steps: int = 1,
        horizon_pages: bool = True,
        margin: bool = True,
    ) -> StepPlan:
        """Plan one step at time `now` over `models` (default: every model; see the module
        docstring). Plans over disjoint model sets may be in flight at once (step lanes): each
        is finished by `update` with its own step id. Raises `RuntimeError` if one of `models`
        already has a plan in flight, `ValueError` for an unknown model.

        `max_steps > 1` allows a multi-step plan (`StepPlan.num_steps`, see `_horizon`): up to
        that many decode iterations of the same batch, planned and applied at once;
        `horizon_pages` False: no more iterations than the decodes' pages hold after this
        step's grants (the plan reserves no page early); `margin` False: pages are taken
        early only when the allocator guarantees the single steps' grants (see
        `_reserve_horizon`), never on the free-fraction margin alone."""
        if models is None:
            lane_models = self._all_models
        else:
            lane_models = frozenset(models)
            unknown = lane_models - self._all_models
            if unknown:
                raise ValueError(f"unknown models {sorted(unknown)}; serving {sorted(self.models)}")
        if self._busy and not self._busy.keys().isdisjoint(lane_models):
            busy = [m for m in lane_models if m in self._busy]
            steps = sorted({self._busy[m].step_id for m in busy})
            raise RuntimeError(f"models {sorted(busy)} are in step {steps}, not finished yet")
        self._step_id += 1
        self.stats.steps += 1
        lane = Lane(self._step_id, lane_models)
        released: list[str] = []
        names = self._names if models is None else [m for m in self.models if m in lane_models]
        for m in names:
            if self._released[m]:
                released += self._released[m]
                self._released[m] = []
        plan = StepPlan(step_id=self._step_id, now=now, released=released)
        builds: dict[str, _Build] = {}  # created when a model gets work
        ctx = PolicyContext(
            now,
            self.config.token_budget,
            self.predictor,
            self.models,
            self.config.unmeetable,
            can_start=self._can_start,
        )
        if self.interference is not None and (self._busy or self.neighbours_in_flight):
            in_flight = len({other.step_id for other in self._busy.values()})
            in_flight += self.neighbours_in_flight
            ctx.slowdown = self.interference.colocated_slowdown(1.0, 1 + in_flight)
        if self.policy.uses_forecast:
            ctx.forecast = {m: self.arrivals[m].forecast(now) for m in names}
        self._all_lane = len(names) == len(self.models)
        budget = self._schedule_decodes(plan, builds, lane, ctx)
        self._refused_all = False
        self._schedule_prefills(plan, builds, lane, ctx, budget)
        if builds:
            for m in names:
                build = builds.get(m)
                if build is not None:
                    batch = _merge(build)
                    if batch is not None and batch.request_ids:
                        plan.batches.append(batch)
            if max_steps > 1:
                plan.num_steps = self._horizon(plan, lane, ctx, max_steps, horizon_pages, margin)
        self._lanes[lane.step_id] = lane
        for m in lane_models:
            self._busy[m] = lane
        self._note_parked(plan, models)
        return plan

    def _note_parked(self, plan: StepPlan, models: frozenset[str] | None) -> None:
        """After planning over `models`: remember the lane as parked when its plan changed
        nothing (see `parked`), else count a change of state."""
        if plan.batches or plan.new_pages or plan.preempted or self._outputs:
            self.state_version += 1
            return
        key = None if models is None else frozenset(models)
        alloc = self.pages.allocator
        if self.policy.static_admission and (
            alloc.isolated_models or (key or self._all_models).issuperset(alloc.model_names)
        ):
            self._parked[key] = self.state_version

    def parked(self, models: frozenset[str] | None = None) -> bool:
        """Whether a plan over `models` (None: every model) now would surely be empty and
        change nothing, as the last one over them was: that plan ran nothing, took no page,
        preempted and rejected nothing, and nothing has changed since (`state_version`: no
        request queued or aborted, no other plan that ran, took pages or preempted, no
        result applied). Such a plan is a function of the scheduler's state and of the
        lane's models' pages, not of the time, when the policy's admission is static (FCFS:
        order by arrival, no rejection; every decode runs): its decodes at a page boundary
        got no page and had no preemption victim, which `choose_victim` decides by page
        counts and reserves only (the time orders candidates, it never removes one), and
        every prefill was refused by counts and pages alike in any order. The lane's pages
        change only through this scheduler when the allocator isolates its models
        (`isolated_models`) or the lane has every model of the allocator (each model of an
        allocator is served by one scheduler). Planning it again would only spend time."""
        version = self._parked.get(None if models is None else frozenset(models))
        if version is None or version != self.state_version:
            return False
        busy = self._busy  # its plan (or another over its models) still in flight
        return not busy or (models is not None and busy.keys().isdisjoint(models))

    # -- plan chains (a plan extended by the plans single steps would make next) ------------
    def may_extend(self, plan: StepPlan, done: int) -> bool:
        """Whether the plan single steps would make after `done` iterations of `plan` (its
        result not applied) is `plan`'s batch going on, so `extend_plan` may stand for it:
        one model's decodes only, all of them in column order (plain columns, no rebuild
        due), the policy running every decode (`Policy.decode_limit`), none ending within
        the `done` iterations (an end frees pages), the lane holding every model of this
        scheduler (no other lane could preempt its sequences meanwhile), and nothing else
        to plan: no request waiting or prefilling, no output pending, none released."""
        if len(plan.batches) != 1 or not self._all_decodes_run:
            return False
        batch = plan.batches[0]
        model = batch.model
        lane = self._lanes.get(plan.step_id)
        if lane is None or batch.num_prefills or lane.models != self._all_models:
            return False
        cols = self._cols[model]
        return (
            lane.decode_idx.get(model, 0) is None
            and not lane.aborted
            and cols.plain
            and not cols.dirty
            and cols.left > done
            and not self.waiting
            and not self.prefilling
            and not self._outputs
            and not self._released[model]
        )

    def fold_plan(self, plan: StepPlan, done: int) -> bool:
        """At the end of one of a chain's plans, `done` iterations in all: `may_extend`, and
        if so give back the pages taken early for iterations not run (the `_trim` applying
        that plan's shorter result would make, at the same moment)."""
        if not self.may_extend(plan, done):
            return False
        batch = plan.batches[0]
        if self._may_hold_surplus(self._lanes[plan.step_id]):
            self._trim(batch, self._cols[batch.model].seqs, done)
        return True

    def extend_plan(
        self,
        plan: StepPlan,
        done: int,
        max_steps: int,
        horizon_pages: bool = False,
        margin: bool = True,
    ) -> int:
        """Extend `plan` (`fold_plan` said so) by the next plan single steps would make
        after its `done` iterations, `schedule(now, models, max_steps, horizon_pages,
        margin)`; returns its iterations k (0: that plan would differ, nothing done). As
        that plan would: the decodes whose KV then fills their last page get one page each,
        in one allocator call, in the same order (0 if the allocator has not that many:
        single steps would arbitrate); k is the fewest of `max_steps` and the tokens any
        decode may still sample, and without `horizon_pages` the tokens every decode's pages
        still hold, else k's pages are reserved as `_horizon` would (`_reserve_horizon` on
        the decodes at their positions then; 1 if it refuses). `plan.num_steps` becomes
        `done + k`; the caller applies the iterations run with one result
        (`StepResult.num_steps` = their total)."""
        batch = plan.batches[0]
        model = batch.model
        cols = self._cols[model]
        t = self.pages.tokens_per_page[model]
        pos, tables, seqs = cols.positions, cols.page_tables, cols.seqs
        if cols.edges is not None:
            edge: Seqs[int] = cols.edges[-(cols.shift + done) % t]
        else:
            edge = [i for i, p in enumerate(pos) if not (p + done) % t]
        full = [seqs[i] for i in edge if pos[i] + done >= len(tables[i]) * t]
        if full:
            alloc = self.pages.allocator
            if alloc.available_pages(model) < len(full):
                return 0
            pages = alloc.allocate(model, len(full))
            for seq, page in zip(full, pages, strict=True):
                seq.pages.append(page)
            plan.new_pages.setdefault(model, []).extend(pages)
            self.state_version += 1
        k = min(max_steps, cols.left - done)
        if k > 1 and not horizon_pages:
            held = map(t.__mul__, map(len, tables))
            k = min(k, min(map(sub, held, map(done.__add__, pos))))
        elif k > 1:
            positions = [p + done for p in pos]  # the decodes as the next plan holds them
            now_batch = ModelBatch(model, batch.key, positions=positions, page_tables=tables)
            now_plan = StepPlan(plan.step_id, plan.now, [now_batch])
            if not self._reserve_horizon(now_plan, k, self._lanes[plan.step_id], margin):
                k = 1
            for m, pages in now_plan.new_pages.items():
                plan.new_pages.setdefault(m, []).extend(pages)
                self.state_version += 1
        plan.num_steps = done + k
        return k

    def _horizon(
        self,
        plan: StepPlan,
        lane: Lane,
        ctx: PolicyContext,
        max_steps: int,
        horizon_pages: bool = True,
        margin: bool = True,
    ) -> int:
        """How many decode iterations `plan` may stand for (1: an ordinary step), reserving
        the pages of the extra ones. More than 1 only when the plan is the same for each of
        them as K single steps would be: decodes only, every decode of its models running
        (also with the contexts of the last iteration: the policy's decode limit), none with
        streaming or stop tokens, none ending before the last iteration, no request waiting
        for the lane's models unless admission surely refuses them all in every iteration
        (`_blocked`), and memory to spare (`horizon_free_fraction`; not needed
        when the plan's decodes already hold the pages of all k iterations: then it takes
        none early). `horizon_pages` False caps k there (iteration j of a decode at position
        p fills token p + j, so k <= pages * tokens_per_page - p)."""
        if plan.preempted or self._outputs:
            return 1  # outputs waiting (rejections) come out with the next step's end
        if self._has_candidates(lane) and not self._blocked(lane):
            return 1
        k = max_steps
        for batch in plan.batches:
            cols = self._cols[batch.model]
            if batch.num_prefills or lane.decode_idx.get(batch.model, 0) is not None:
                return 1
            if not cols.plain or cols.dirty:
                return 1
            k = min(k, cols.left)
            if not horizon_pages and k > 1:
                # tokens each decode's pages still hold: pages * tokens_per_page - position
                t = self.pages.tokens_per_page[batch.model]
                held = map(t.__mul__, map(len, batch.page_tables))
                k = min(k, min(map(sub, held, batch.positions)))
        while k > 1 and not self._limits_hold(plan, ctx, k):
            k //= 2
        # (without `horizon_pages` the decodes hold every page of the k iterations already)
        if k > 1 and horizon_pages and not self._reserve_horizon(plan, k, lane, margin):
            return 1
        return k

    def _blocked(self, lane: Lane) -> bool:
        """Whether the requests waiting for the lane's models are refused admission in every
        iteration of a decode-only multi-step plan, as they were in this step's prefill pass
        (`_refused_all`: each refused by `_can_start`, with a policy whose admission depends
        on nothing but the candidates). In the later iterations, as single steps, the
        candidates, the token budget (the same decodes), their chunks and pages needed and
        every model's running count are the same (no request ends before the last
        iteration, none starts or is preempted), and no model's available pages grow: the
        plan's decode grants only allocate (`monotone_available`) and no other plan can free
        pages these models may use (`isolated_models`, or the lane has every model of the
        allocator). So every check fails again. The simulator ends a horizon at an arrival
        for the lane, as it does without waiting requests."""
        if not self._refused_all:
            return False
        alloc = self.pages.allocator
        if not alloc.monotone_available:
            return False
        return alloc.isolated_models or lane.models.issuperset(alloc.model_names)

    def _limits_hold(self, plan: StepPlan, ctx: PolicyContext, k: int) -> bool:
        """Whether the policy runs every decode of `plan` also in its k-th iteration (always,
        for a policy that keeps `Policy.decode_limit`: every decode runs)."""
        if self._all_decodes_run:
            return True
        for batch in plan.batches:
            contexts = [p + k - 1 for p in batch.positions]
            ctx.decode_contexts[batch.model] = contexts
            seqs = self._cols[batch.model].seqs
            if self.policy.decode_limit(self.models[batch.model], seqs, ctx) < len(seqs):
                return False
        return True

    def _reserve_horizon(
        self, plan: StepPlan, k: int, lane: Lane | None = None, margin: bool = True
    ) -> bool:
        """Give every decode of `plan` the pages for k iterations, if memory is ample
        (`horizon_free_fraction`), or if the allocator guarantees the grants of the k single
        steps in any order (`grants_in_pieces`) when nothing else can allocate or free in it
        meanwhile: its available pages never grow on allocation (`monotone_available`) and
        `lane` has all its models, with no request admitted during the plan (none waits, or
        `_blocked`), so single steps would make exactly these grants, all granted. Without
        `margin` only that guarantee counts."""
        alloc = self.pages.allocator
        needs: dict[str, list[int]] = {}
        for batch in plan.batches:
            t = self.pages.tokens_per_page[batch.model]
            tables = batch.page_tables
            needs[batch.model] = [
                max(0, -(-(p + k) // t) - len(tables[i])) for i, p in enumerate(batch.positions)
            ]
        if not any(map(any, needs.values())):
            return True  # the decodes hold every page already: nothing is taken early
        frac = self.config.horizon_free_fraction
        if not (
            lane is not None
            and alloc.monotone_available
            and lane.models.issuperset(alloc.model_names)
            and alloc.grants_in_pieces({m: sum(n) for m, n in needs.items()})
        ):
            if not margin:
                return False
            for m in alloc.model_names:
                free = alloc.available_pages(m)
                if free - sum(needs.get(m, ())) < frac * (free + alloc.used_pages(m)):
                    return False
        for batch in plan.batches:
            need = needs[batch.model]
            total = sum(need)
            if not total:
                continue
            pages = alloc.allocate(batch.model, total)
            if lane is not None:
                lane.reserved = True
            plan.new_pages.setdefault(batch.model, []).extend(pages)
            at = 0
            for table, n in zip(batch.page_tables, need, strict=True):
                if n:
                    table.extend(pages[at : at + n])
                    at += n
        return True

    def _build(self, builds: dict[str, _Build], model: str) -> _Build:
        build = builds.get(model)
        if build is None:
            build = builds[model] = _Build(self.models[model].key)
        return build

    def _model_order(self, lane: Lane) -> list[str]:
        """The lane's models by SLO slack: the earliest TTFT deadline among their prefills
        first."""
        if len(lane.models) == 1:
            return list(lane.models)
        if not self.waiting and not self.prefilling:  # all at inf: served-model order
            return [m for m in self.models if m in lane.models]
        urgent = {m: float("inf") for m in self.models if m in lane.models}
        get = urgent.get
        for seq in self._prefill_candidates():
            u = get(seq.model)
            # `min(u, deadline)`: the deadline only when strictly smaller
            if u is not None and seq.deadline_s < u:
                urgent[seq.model] = seq.deadline_s
        return sorted(urgent, key=urgent.__getitem__)

    def _prefill_candidates(self) -> Iterator[Sequence]:
        """Waiting, then prefilling sequences, in queue order (one chain: no generator frame
        per sequence on the hot path)."""
        return chain(self.waiting.values(), self.prefilling.values())

    def _has_candidates(self, lane: Lane) -> bool:
        """`bool(self._lane_candidates(lane))`, without building the list."""
        if not self.waiting and not self.prefilling:
            return False
        if self._all_lane:
            return True
        models = lane.models
        if len(models) == 1:
            (model,) = models
            if self.waiting_of[model]:
                return True
            return any(s.model == model for s in self.prefilling.values())
        return any(s.model in models for s in self._prefill_candidates())

    def _lane_candidates(self, lane: Lane) -> list[Sequence]:
        """Waiting and prefilling sequences of the lane's models, in queue order."""
        if not self.waiting and not self.prefilling:
            return []
        if self._all_lane:
            return list(self._prefill_candidates())
        models = lane.models
        if len(models) == 1:  # the model's own waiting queue: no pass over the others'
            (model,) = models
            out = list(self.waiting_of[model].values())
            if self.prefilling:
                out += [s for s in self.prefilling.values() if s.model == model]
            return out
        return [s for s in self._prefill_candidates() if s.model in models]

    def _schedule_decodes(
        self, plan: StepPlan, builds: dict[str, _Build], lane: Lane, ctx: PolicyContext
    ) -> int:
        """Add the decodes the policy allows; returns the token budget left for prefill."""
        budget = self.config.token_budget
        all_cols = self._cols
        for name in self._model_order(lane):
            cols = all_cols[name]
            if cols.dirty:
                cols.rebuild(self.decoding[name], self.pages.tokens_per_page[name])
            running = cols.seqs
            if not running:
                continue
            ctx.decode_contexts[name] = cols.positions
            limit = self.policy.decode_limit(self.models[name], running, ctx)
            build = self._build(builds, name)
            build.decode = batch = self._add_decodes(name, build.key, cols, limit, plan, lane)
            budget -= len(batch.request_ids)
            ctx.decodes[name] = batch.positions
        return max(budget, 0)

    def _add_decodes(
        self,
        model: str,
        key: InstanceKey,
        cols: DecodeCols,
        limit: int,
        plan: StepPlan,
        lane: Lane,
    ) -> ModelBatch:
        """The decode batch of `model` from its decode columns (at most `limit`, longest-
        waiting first, so none starves), first growing the page tables of those whose KV fills
        its last page. Hot path: column-wise, no pass over the sequences when every decode
        runs (the decodes at a page boundary come from `cols.edges`)."""
        seqs = cols.seqs
        now = plan.now
        n = len(seqs)
        idx: list[int] | None = None
        if limit < n:
            idx = sorted(range(n), key=lambda i: seqs[i].last_token_s or 0.0)[:limit]
        t = self.pages.tokens_per_page[model]
        pos = cols.positions
        # KV covers `position` tokens, so a decode fills its last page only at a page boundary
        edge: Seqs[int]
        if idx is not None:
            edge = [i for i in idx if not pos[i] % t]
        elif cols.edges is not None:
            edge = cols.edges[-cols.shift % t]
        elif 0 in map(mod, pos, repeat(t)):
            edge = [i for i, p in enumerate(pos) if not p % t]
        else:
            edge = ()
        if edge:
            tables = cols.page_tables  # a tracked decode has `position` tokens computed
            full = [seqs[i] for i in edge if pos[i] >= len(tables[i]) * t]
            if full and not self._grant_one_each(full, plan, lane, now):
                if self.shortcuts and not cols.dirty:
                    # none of the model's decodes was preempted (that sets `dirty`): all
                    # still run with their pages, and a decode off a page boundary has room
                    # (its pages hold `position` tokens, a multiple of t above it), so only
                    # the boundary ones still without a page drop out (the check below)
                    stuck = {i for i in edge if pos[i] >= len(tables[i]) * t}
                    idx = [i for i in (range(n) if idx is None else idx) if i not in stuck]
                else:
                    running = RUNNING
                    idx = [
                        i
                        for i in (range(n) if idx is None else idx)
                        if seqs[i].status is running
                        and seqs[i].num_computed < len(seqs[i].pages) * t
                    ]
        lane.decode_idx[model] = idx
        if idx is None:  # every decode, in column order: the columns that are replaced,
            # never changed in place, are shared (see `DecodeCols`); positions are copied
            lane.decode_seqs[model] = seqs
            lane.all_decodes.add(model)
            return ModelBatch(
                model,
                key,
                cols.request_ids,
                list(map(_last, cols.tokens)),
                pos[:],
                cols.page_tables,
                [True] * n,
                cols.sampling,
                list(map(sub, pos, cols.num_prompt)),
            )
        lane.decode_seqs[model] = [seqs[i] for i in idx]
        ids = [cols.request_ids[i] for i in idx]
        lane.scheduled.update(ids)
        tokens, tables, sampling = cols.tokens, cols.page_tables, cols.sampling
        positions = [pos[i] for i in idx]
        prompt = cols.num_prompt
        return ModelBatch(
            model,
            key,
            ids,
            [tokens[i][-1:] for i in idx],
            positions,
            [tables[i] for i in idx],
            [True] * len(idx),
            [sampling[i] for i in idx],
            [p - prompt[i] for p, i in zip(positions, idx, strict=True)],
        )

    def _grant_one_each(self, full: list[Sequence], plan: StepPlan, lane: Lane, now: float) -> bool:
        """One more page for each of `full`: in one allocator call when memory allows (True),
        else one by one with arbitration and preemption (False: some may have none). Once a
        grant fails with nothing preempted while the model may give up no page
        (`PageBroker.room` < 1), the rest are not tried: each would fail alike (no page is
        free, and `pick_victim` finds a sequence of the model, the one refused, first).

        Likewise (`shortcuts`) once a grant fails with nothing preempted because
        `pick_victim` had no candidate at all (`PageBroker.no_candidate`): nothing changed,
        so the next sequence's one page is refused alike, and its candidates are the same
        sequences of the model with the refused one in its place. Each of those, and the
        refused one, holds more pages than the model may give up (else it would have been
        a candidate), so the next sequence has no candidate either (it was itself one of
        the refused one's: a running decode of the lane's model, not yet in any plan)."""
        model = full[0].model
        try:
            pages = self.pages.allocator.allocate(model, len(full))
        except OutOfPagesError:
            stats, broker = self.stats, self.pages
            for seq in full:
                if seq.status is RUNNING:
                    before = stats.preemptions
                    granted = self._grant(seq, 1, plan, lane, now)
                    if granted or stats.preemptions != before:
                        continue
                    if broker.room(model) < 1 or (self.shortcuts and broker.no_candidate):
                        break
            return False
        for seq, page in zip(full, pages, strict=True):
            seq.pages.append(page)
        plan.new_pages.setdefault(model, []).extend(pages)
        return True

    def _schedule_prefills(
        self,
        plan: StepPlan,
        builds: dict[str, _Build],
        lane: Lane,
        ctx: PolicyContext,
        budget: int,
    ) -> None:
        """Prefill chunks in the policy's order until the token budget is spent."""
        scheduled = lane.scheduled
        if not self._has_candidates(lane):
            self._refused_state = None
            return
        if self._pass_refused(lane, budget):
            return
        candidates = self._lane_candidates(lane)
        memo: dict[str, list[int | None]] = {}
        if self.shortcuts:
            self._admit_memo = memo  # admission checks share counts while nothing changes
        refused_all = self.policy.static_admission
        admission_budget = budget
        try:
            admission = self.policy.admit(candidates, ctx)
            for seq in admission.rejected:
                refused_all = False
                self.stats.rejected += 1
                self._finish(seq, REJECTED, "cannot meet its TTFT SLO even alone")
            memo.clear()
            if admission.token_budget is not None:
                budget = min(budget, admission.token_budget)
            order = admission.order
            if len(lane.models) > 1:  # (one model: a stable sort by model rank keeps it)
                order = self._memory_order(order, budget, ctx.now)
            complete = True  # every candidate of `order` checked (no budget break)
            # one model: a refusal skips the waiting candidates refused alike (`_skip_refused`)
            skip = self.shortcuts and len(lane.models) == 1
            # the candidates not waiting now (the only ones that may be other than waiting
            # when the pass reaches them), and their indices in `order` once needed
            unwaiting = [s for s in self.prefilling.values() if s.model in lane.models]
            stops: list[int] | None = None
            at, n_order = 0, len(order)
            while at < n_order:
                seq = order[at]
                at += 1
                if budget <= 0:
                    complete = False
                    break
                waiting = seq.status is Status.WAITING
                if not waiting:
                    refused_all = False
                    if seq.request_id not in self.prefilling:
                        continue  # preempted or finished meanwhile
                if seq.request_id in scheduled:
                    continue
                chunk = min(seq.pending, budget)
                if waiting:
                    if not self._can_start(seq, chunk):
                        if skip:
                            if stops is None:
                                stops = _indices(order, unwaiting)
                            counts = memo.get(seq.model)
                            at = self._skip_refused(order, at, budget, counts, stops)
                        continue  # refused: nothing changed
                    refused_all = False
                started = self._start_chunk(seq, chunk, plan, lane, ctx.now, checked=True)
                if started or not waiting:  # pages taken, or granted/preempted: counts stale
                    memo.clear()
                if started:
                    build = self._build(builds, seq.model)
                    if build.prefill is None:
                        build.prefill = ModelBatch(seq.model, build.key)
                    _add(build.prefill, seq, _chunk(seq, chunk), chunk == seq.pending)
                    scheduled.add(seq.request_id)
                    budget -= chunk
            self._refused_all = refused_all
            if (
                self.shortcuts
                and refused_all
                and complete
                and not admission.rejected
                and len(order) == len(candidates)
            ):
                self._refused_state = self._admission_state(lane, admission_budget)
        finally:
            self._admit_memo = None

    def _pass_refused(self, lane: Lane, budget: int) -> bool:
        """Whether the lane's prefill pass (it has candidates) would refuse every candidate
        and change nothing, known without running it: it repeats the last pass that did
        (`_refused_state`), or `_refuses_all` (`shortcuts`). If so, set what that pass
        would set (`_refused_all` True, `_refused_state` this state) and return True."""
        refused_state = self._refused_state
        if refused_state is not None:
            self._refused_state = None
            state = self._admission_state(lane, budget)
            if state == refused_state:  # the same pass again: every candidate refused
                self._refused_state = state
                self._refused_all = True
                return True
        if self.shortcuts and self._refuses_all(lane, budget):  # as the pass would end
            self._refused_all = True
            self._refused_state = self._admission_state(lane, budget)
            return True
        return False

    def _refuses_all(self, lane: Lane, budget: int) -> bool:
        """Whether a prefill pass of the one-model `lane` now, under a policy of static
        admission, would admit nothing and change nothing but set `_refused_all` (True):
        no sequence of the model is prefilling (every candidate waits), the admission
        rejects none and changes none (static admission), and `_can_start` refuses every
        waiting sequence whatever its length (its model is at `max_running`, or its
        available pages leave none above the headroom: `_skip_refused`'s cap < 1), so
        whichever candidates the policy orders and whatever budget it gives, none starts.
        The pass would leave `_refused_state` as this state (a hint: a later pass in the
        same state refuses alike), which the caller records."""
        if not self.policy.static_admission or len(lane.models) != 1 or budget <= 0:
            return False
        (model,) = lane.models
        if any(s.model == model for s in self.prefilling.values()):
            return False
        cfg = self.config
        running = self.num_running(model)
        if running >= cfg.max_running:
            return True
        return self._start_cap(model, running, self.pages.available(model)) < 1

    def _skip_refused(
        self,
        order: list[Sequence],
        at: int,
        budget: int,
        counts: list[int | None] | None,
        stops: list[int],
    ) -> int:
        """Within a prefill pass of a one-model lane, just after `_can_start` refused a
        waiting candidate with the model's `counts` [running, available pages] memoised:
        the index of the first candidate from `at` on that the pass would not refuse alike,
        so the ones before it may be skipped (each would be refused, changing nothing).
        `stops`: the ascending indices in `order` of the candidates that were not waiting
        when the pass began (every other one from `at` on is still waiting).

        A waiting sequence holds no page and has nothing computed, so `_can_start` refuses
        it iff running >= `max_running`, or its chunk min(len(tokens), budget) needs more
        pages than available - keep, i.e. exceeds cap = (available - keep) * t tokens. The
        counts and the budget stay the same until a candidate is admitted or one that is
        not waiting is met. When every waiting one is refused (running >= `max_running`, or
        cap < 1 while a chunk has a token at least) the answer is the next of `stops`; else
        the rest of `order` is checked up to the first one it would not refuse."""
        if counts is None:
            return at
        running, free = counts
        assert running is not None
        n = len(order)
        cfg = self.config
        if running >= cfg.max_running:
            return _next_stop(stops, at, n)
        if free is None or at >= n:
            return at
        cap = self._start_cap(order[at].model, running, free)
        if cap < 1:
            return _next_stop(stops, at, n)
        if budget <= cap:
            return at  # every waiting candidate's chunk fits
        waiting = Status.WAITING
        for i in range(at, n):  # the first one not refused
            seq = order[i]
            if seq.status is not waiting or len(seq.tokens) <= cap:
                return i
        return n

    def _admission_state(self, lane: Lane, budget: int) -> tuple[object, ...]:
        """What a prefill pass of a policy with static admission decides on, when every
        candidate is waiting: the lane's models, the token budget left by the decodes, the
        waiting queue (`waiting_version`: the same sequences, which do not change while they
        wait) and per lane model its running count and available pages (what `_can_start`
        reads). A pass that refused every candidate refuses them all again in this state
        (nothing in it depends on the time: FCFS order, the memory order only reorders), so
        `_schedule_prefills` skips it (`shortcuts`)."""
        models = lane.models
        return (
            models,
            budget,
            self.waiting_version,
            tuple(
                (self.num_running(m), self.pages.available(m)) for m in self.models if m in models
            ),
        )

    def _start_chunk(
        self,
        seq: Sequence,
        chunk: int,
        plan: StepPlan,
        lane: Lane,
        now: float,
        checked: bool = False,
    ) -> bool:
        """Get the pages for a prefill chunk; a waiting sequence starts only if its model is
        under `max_running` and keeps `admit_headroom_pages` free (`checked`: the caller
        found so with `_can_start` just now), and never preempts."""
        if seq.status is Status.WAITING:
            if not checked and not self._can_start(seq, chunk):
                return False
            need = self.pages.pages_needed(seq, seq.num_computed + chunk)
            got = self.pages.try_allocate(seq, need)
            if self._admit_memo is not None:  # even a refusal may have moved pages (unmaps)
                self._admit_memo.clear()
            if got is None:
                return False
            plan.new_pages.setdefault(seq.model, []).extend(got)
            self._unqueue(seq)
            self.prefilling[seq.request_id] = seq
            seq.status = Status.RUNNING
            return True
        need = self.pages.pages_needed(seq, seq.num_computed + chunk)
        return need == 0 or self._grant(seq, need, plan, lane, now)

    def _can_start(self, seq: Sequence, chunk: int | None = None) -> bool:
        """Whether a sequence may take its next chunk now: a running one always may; a waiting
        one if its model is under `max_running` and keeps `admit_headroom_pages` free, plus
        `growth_pages_per_running` for each of its running sequences.

        Within a prefill pass (`_admit_memo` set) the model's running count and available
        pages are read once and reused until the pass allocates, grants or preempts (it
        clears the memo then): the same answers as reading them on every call, without an
        O(running) count and an allocator query per waiting request."""
        if seq.status is not Status.WAITING:
            return True
        model = seq.model
        memo = self._admit_memo
        if memo is None:
            running: int | None = self.num_running(model)
            free = None
        else:  # within a prefill pass: the counts of the model's first check since a change
            counts = memo.get(model)
            if counts is None:
                counts = memo[model] = [self.num_running(model), None]
            running, free = counts
        assert running is not None
        if running >= self.config.max_running:
            return False
        chunk = min(seq.pending, self.config.token_budget) if chunk is None else chunk
        need = self.pages.pages_needed(seq, seq.num_computed + chunk)
        if free is None:
            free = self.pages.available(model)
            if memo is not None:
                memo[model][1] = free
        return free >= need + self._admission_keep(running)

    def _start_cap(self, model: str, running: int, free: int) -> int:
        """The most tokens a waiting sequence of `model` may start with (`_can_start`'s
        memory rule) when it has `running` sequences and `free` available pages."""
        return (free - self._admission_keep(running)) * self.pages.tokens_per_page[model]

    def _admission_keep(self, running: int) -> int:
        """Pages a model with `running` sequences must keep free after admitting a prompt."""
        cfg = self.config
        return cfg.admit_headroom_pages + cfg.growth_pages_per_running * running

    def _memory_order(self, order: list[Sequence], budget: int, now: float) -> list[Sequence]:
        """When the chunks this step would need more pages than a model can get, serve models
        in the arbitration's grant order (stable within a model)."""
        demand: dict[str, int] = {}
        slack: dict[str, float] = {}
        for seq in order:
            if budget <= 0:
                break
            chunk = min(seq.pending, budget)
            budget -= chunk
            demand[seq.model] = demand.get(seq.model, 0) + self.pages.pages_needed(
                seq, seq.num_computed + chunk
            )
            slack[seq.model] = min(slack.get(seq.model, float("inf")), seq.deadline_s - now)
        if all(n <= self.pages.available(m) for m, n in demand.items()):
            return order
        rank = {m: i for i, m in enumerate(self.pages.rank_models(demand, slack))}
        return sorted(order, key=lambda s: rank.get(s.model, len(rank)))

    def _grant(self, seq: Sequence, n: int, plan: StepPlan, lane: Lane, now: float) -> bool:
        """Pages for a running sequence, preempting unscheduled running ones if needed."""

        def others() -> Iterator[Sequence]:
            return self._preemptible(lane, seq.model)

        def preempt(victim: Sequence) -> None:
            self._preempt(victim, plan)

        got = self.pages.grant(seq, n, others, preempt, now)
        if got is None:
            return False
        plan.new_pages.setdefault(seq.model, []).extend(got)
        return True

    def _preemptible(self, lane: Lane, first: str | None = None) -> Iterator[Sequence]:
        """Running sequences in neither `lane`'s plan nor a plan in flight, in `_running`
        order except that those of model `first` come first (`PageBroker.pick_victim` looks
        at them first and keeps each model's order); a model whose decodes all run in one of
        those plans is skipped whole."""
        if first is not None:
            yield from self._preemptible_of(lane, first, None)
            yield from self._preemptible_of(lane, None, first)
        else:
            yield from self._preemptible_of(lane, None, None)

    def _preemptible_of(self, lane: Lane, only: str | None, skip: str | None) -> Iterator[Sequence]:
        """`_preemptible`'s sequences of model `only` (None: every model but `skip`)."""
        busy, runs = self._busy, self._runs
        scheduled = lane.scheduled
        for s in self.prefilling.values():
            model = s.model
            if s.request_id in scheduled or model == skip or (only is not None and model != only):
                continue
            other = busy.get(model)
            if other is None or not runs(other, s):
                yield s
        if only is not None:
            decoding = self.decoding
            items: Iterable[tuple[str, dict[str, Sequence]]] = (
                ((only, decoding[only]),) if only in decoding else ()
            )
        else:
            items = self.decoding.items()
        for model, running in items:
            if model == skip:
                continue
            other = busy.get(model)
            if model in lane.all_decodes or (other is not None and model in other.all_decodes):
                continue
            for s in running.values():
                if runs(lane, s) or (other is not None and runs(other, s)):
                    continue
                yield s

    def _running(self) -> Iterator[Sequence]:
        yield from self.prefilling.values()
        for running in self.decoding.values():
            yield from running.values()

    def _preempt(self, seq: Sequence, plan: StepPlan) -> None:
        """Preempt by recompute: free every page, keep the outputs, queue it again."""
        self.pages.release(seq)
        self.prefilling.pop(seq.request_id, None)
        if self.decoding[seq.model].pop(seq.request_id, None) is not None:
            self._cols[seq.model].dirty = True
        seq.num_computed = 0
        seq.prefill_alone_s = None
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self._queue(seq)
        self.stats.preemptions += 1
        by_model = self.stats.preemptions_by_model
        by_model[seq.model] = by_model.get(seq.model, 0) + 1
        plan.preempted.append(seq.request_id)


def _indices(order: list[Sequence], members: list[Sequence]) -> list[int]:
    """The ascending indices in `order` of those of `members` it holds (a `Sequence`
    compares by identity)."""
    found = []
    for seq in members:
        try:
            found.append(order.index(seq))
        except ValueError:
            continue
    return sorted(found)


def _next_stop(stops: list[int], at: int, n: int) -> int:
    """The first of the ascending `stops` at or after `at`, else n."""
    i = bisect_left(stops, at)
    return stops[i] if i < len(stops) else n


def _chunk(seq: Sequence, n: int) -> list[int]:
    return seq.tokens[seq.num_computed : seq.num_computed + n]


def _add(batch: ModelBatch, seq: Sequence, tokens: list[int], samples: bool) -> None:
    batch.request_ids.append(seq.request_id)
    batch.token_ids.append(tokens)
    batch.positions.append(seq.num_computed)
    batch.page_tables.append(seq.pages)
    batch.samples.append(samples)
    batch.sampling.append(seq.sampling)
    batch.output_index.append(len(seq.tokens) - seq.num_prompt)


def _merge(build: _Build) -> ModelBatch | None:
    """Prefill chunks first, then decodes (the `ModelBatch` invariant); None if neither."""
    p, d = build.prefill, build.decode
    if p is None or not p.request_ids:
        return d
    if d is None or not d.request_ids:
        p.num_prefills = len(p.request_ids)
        return p
    return ModelBatch(
        p.model,
        p.key,
        p.request_ids + d.request_ids,
        p.token_ids + d.token_ids,
        p.positions + d.positions,
        p.page_tables + d.page_tables,
        p.samples + d.samples,
        p.sampling + d.sampling,
        p.output_index + d.output_index,
        num_prefills=len(p.request_ids),
    )


__all__ = ["LocalScheduler", "SchedulerStats"]
