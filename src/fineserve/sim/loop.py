"""The discrete-event cluster simulator: N GPUs, each GPU group running real engines.

Events on one virtual clock: request arrivals (a sorted list), step completions (one heap entry
per GPU group: its next activity completion, invalidated by a version number whenever the
group's concurrency changes) and placement events (`replace_at`: a callback returning a new
placement, applied between events). An engine is *busy* from `begin_step(now)` until every
batch of its plan has finished on the group (see `device.py` for the interference model), then
`finish_step(result, now)` runs and its outputs become request records; an idle engine with work
starts its next step at once. Requests go to the instance of their model with the fewest
unfinished requests (ties: first placed).

With step lanes (`SchemeSpec.lanes`), a shared engine steps each co-located model in its own
lane (`Engine.begin_step(now, models={m})`): each lane's batch is its own activity, started as
soon as that lane is idle, so one model's long prefill does not hold back the others' decodes;
the lanes still share the engine's KV arena and arbitration. An empty lane plan is finished at
once and retried at the group's next event or the model's next arrival.

Multi-step horizon (`max_steps > 1`, default 64): a lane asks its engine for up to
`max_steps` decode iterations at once (`Engine.begin_step(..., max_steps)`; the scheduler makes
one only when it is the same as as many single steps: decodes only, none ending before the
last, nothing waiting, memory to spare). A plan of one batch is one activity whose work is the
sum of its iterations' solo times, with a mark at each iteration's end; a plan of several
batches runs its iterations one after another, each as one activity per batch (the next
starts when all have finished, as the engine's next step would), without calling the engine.
Whatever would make the engine plan differently before the horizon ends stops it at the end
of the iteration in progress (`GpuGroup.cut` for a single activity), and the plan is finished
with the iterations run: an arrival of
one of the lane's models at its engine, another lane of the group left idle with work (an
empty plan, retried at every event of the group), or outputs produced outside a step
(rejections: they come out at the group's next event, and free a routing slot). So the
records are those of single steps (times within float rounding). No horizon is made with
per-token times (`token_times`: requests stream). An engine with map costs (`map_cost_s`)
asks for horizons that take no page early (`begin_step(..., horizon_pages=False)`: only the
iterations its decodes' pages already hold): pages reserved at a horizon's start would be
(un)mapped and charged earlier than single steps do, while within such a horizon the engine
makes no allocator call, so every step's map charge is that of single steps.

Exact shortcuts, each tested against the plain path (records bit-equal): a *parked* lane (its
last plan was empty and changed nothing under FCFS, `Engine.parked`) is not planned again at
its group's events until its engine's state changes (`skip_parked`); a *stepped* run
(`step_runs`) lets a solo lane that other idle lanes keep to single steps run a multi-step
plan as one activity per iteration, so the events and floats are those of the single steps;
a *chain* (`chains`) extends a one-model lane's plan by the plans single steps would make
next (`Engine.fold_step` / `extend_step`), each its own activity, the tokens applied once.

Invariants: the clock never goes back; a lane has at most one plan in flight; every request
has exactly one record; requests still unfinished at the horizon, and requests of models the
placement left out, count as failed.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import ClassVar

from fineserve.costmodel.base import CostModel, InterferenceModel
from fineserve.engine.engine import Engine
from fineserve.engine.step import REJECTED, RequestOutput, StepPlan, StepResult
from fineserve.memory.allocator import KVAllocator
from fineserve.scheduler.local.errors import InvalidRequestError
from fineserve.sim.catalog import GpuSpec, SimModel, slo_scaled
from fineserve.sim.collector import rare_collections
from fineserve.sim.device import EPS, Activity, GpuGroup
from fineserve.sim.placement import Placement
from fineserve.sim.records import RecordBook
from fineserve.sim.schemes import SchemeSpec, build_group_engines
from fineserve.sim.stepper import BatchCoster


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One request of the workload (arrival on the simulation clock)."""

    request_id: str
    model: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(slots=True, eq=False)
class SimLane:
    """One step lane of an engine and its plan in flight: `models` None is the whole-engine
    step (`begin_step(now)`), a set is an engine step lane (`begin_step(now, models)`)."""

    eng: SimEngine
    models: frozenset[str] | None
    result: StepResult | None = None
    left: int = 0
    horizon: Activity | None = None  # the activity of a one-batch multi-step plan in flight
    iterations: list[list[tuple[float, float]]] | None = None  # a multi-batch one's, in flight
    at: int = 0  # the iteration of `iterations` running
    stepped: bool = False  # `iterations` stand for single steps (see `ClusterSim.step_runs`)
    boundary: bool = False  # a stepped run or a chain between two plans, within `_complete`
    chained: bool = False  # its plan may be extended (see `ClusterSim.chains`)
    done: int = 0  # iterations of a chain's plans before the one in flight

    @property
    def spanning(self) -> bool:
        """A multi-step plan in flight that may still run more iterations."""
        its = self.iterations
        return self.horizon is not None or (its is not None and self.at + 1 < len(its))


@dataclass(slots=True, eq=False)
class SimEngine:
    """An engine on a GPU group, with its lanes (one whole-engine lane, or one per model)."""

    engine: Engine
    group: GpuGroup
    allocator: KVAllocator
    models: list[str]
    map_cost_s: float = 0.0
    outstanding: int = 0  # requests in flight, all models
    outstanding_by: dict[str, int] = field(default_factory=dict)  # ... per model
    map_seen: int = 0
    retired: bool = False
    gpus: frozenset[int] = frozenset()
    lanes: list[SimLane] = field(default_factory=list)
    lane_of: dict[str, SimLane] = field(default_factory=dict)
    solo: bool = False  # see `make_lanes`

    def make_lanes(self, per_model: bool) -> None:
        """One lane per served model (`per_model`), else one whole-engine lane."""
        if per_model and len(self.models) > 1:
            self.lanes = [SimLane(self, frozenset({m})) for m in self.models]
        else:
            self.lanes = [SimLane(self, None)]
        self.lane_of = {}
        for lane in self.lanes:
            for m in lane.models or self.models:
                self.lane_of[m] = lane
        # one lane, whose plans depend on its engine's state and arrivals only: no other
        # engine's plan can change the pages its models may get
        alloc = self.allocator
        self.solo = len(self.lanes) == 1 and (
            alloc.isolated_models or set(alloc.model_names) <= set(self.models)
        )


@dataclass
class SimStats:
    steps: int = 0
    events: int = 0
    sim_end_s: float = 0.0
    gpu_busy_s: float = 0.0
    replacements: int = 0
    preemptions: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class ClusterSim:
    """One simulation run (see the module docstring). Not reusable: make one per run.

    `slo_margin`: the engines serve every model at its SLOs times this margin (they plan,
    admit and reject for those deadlines) while the records keep the models' own SLOs, the
    ones the requests are judged at."""

    #: exact shortcut (tests turn it off to compare with the plain path): an idle lane with
    #: work whose engine says a plan would be empty and change nothing (`Engine.parked`) is
    #: not planned again at its group's events; its empty plan's only effect, ending the
    #: group's horizons, is kept
    skip_parked: ClassVar[bool] = True
    #: exact shortcut (tests turn it off): a solo lane (`SimEngine.solo`) kept to single steps
    #: only by other lanes of its group idle with work asks for a multi-step plan anyway and
    #: runs it as those single steps would run: one activity per iteration (the same events
    #: and floats), the engine not called between them while single steps would still be
    #: planned alike (no other lane of the group can change its plans; see `_step_on`)
    step_runs: ClassVar[bool] = True
    #: exact shortcut (tests turn it off): a one-model lane's plan is extended by the plans
    #: single steps would make next (`Engine.fold_step` / `extend_step`: the same page
    #: grants, early pages and give-backs at the same events, the same iterations) while
    #: nothing but its decodes goes on; each such plan is costed and run as its own activity
    #: at its own start, exactly as `_start` would, but the engine applies their tokens
    #: once, when the chain ends
    chains: ClassVar[bool] = True

    def __init__(
        self,
        models: Sequence[SimModel],
        placement: Placement,
        scheme: SchemeSpec,
        cost_model: CostModel,
        interference: InterferenceModel,
        gpu: GpuSpec | None = None,
        token_times: bool = False,
        max_steps: int = 64,
        slo_margin: float = 1.0,
    ) -> None:
        self.models = {m.name: m for m in models}
        self._served = {m.name: slo_scaled(m, slo_margin) for m in models}  # what engines see
        self.max_steps = max_steps
        self._due: dict[str, list[float]] = {}  # per model, arrivals to come (next last)
        self._horizon_s = math.inf
        self.scheme = scheme
        self.cost_model = cost_model
        self.interference = interference
        self.gpu = gpu or GpuSpec()
        self.coster = BatchCoster(cost_model)
        self.book = RecordBook(token_times)
        self.stats = SimStats()
        self.groups: list[GpuGroup] = []
        self.engines: list[SimEngine] = []
        self.routes: dict[str, list[SimEngine]] = {}
        self._heap: list[tuple[float, int, int]] = []
        self._gid: dict[int, int] = {}
        self._on_group: dict[int, list[SimEngine]] = {}
        self._engine_of: dict[str, SimEngine] = {}
        # re-routing of rejections (`SchemeSpec.reroute_rejected`): each request in flight
        # with the engines it was sent to, and those rejected at this event with the engines
        # left to send them on to
        self._reroute = scheme.reroute_rejected
        self._sent_to: dict[str, tuple[SimRequest, list[SimEngine]]] = {}
        self._rerouted: list[tuple[SimRequest, list[SimEngine]]] = []
        self.apply_placement(placement, 0.0)

    # -- placement ---------------------------------------------------------------------------
    def apply_placement(self, placement: Placement, now: float) -> None:
        """Build engines for `placement`. An engine serving exactly the same models on the same
        GPUs keeps running; other old engines stop taking requests and drain, and their memory
        is not returned to the new groups (a conservative migration model)."""
        keep = {(tuple(sorted(e.gpus)), tuple(e.models)) for e in self.engines if not e.retired}
        new_sets = {(gpus, tuple(names)) for gpus, names in placement.groups().items()}
        self.routes = {}
        for eng in self.engines:
            ident = (tuple(sorted(eng.gpus)), tuple(eng.models))
            if eng.retired or ident not in new_sets:
                eng.retired = True
                continue
            for name in eng.models:  # unchanged engine: keeps running and taking requests
                self.routes.setdefault(name, []).append(eng)
        arenas = group_arenas(placement, self.models, self.gpu)
        domains: dict[tuple[int, ...], GpuGroup] = {}
        for dom in gpu_domains(list(placement.groups())):
            group = GpuGroup(tuple(sorted(set().union(*dom))), self.interference, last_t=now)
            group.single_set = len(dom) == 1
            self._gid[id(group)] = len(self.groups)
            self._on_group[id(group)] = []
            self.groups.append(group)
            domains.update(dict.fromkeys(dom, group))
        for gpus, names in placement.groups().items():
            if (gpus, tuple(names)) in keep and self.engines:
                continue
            group = domains[gpus]
            ms = [self._served[n] for n in names]
            alloc, engines = build_group_engines(
                self.scheme, ms, arenas[gpus], self.cost_model, self.interference
            )
            for engine, served in engines:
                eng = SimEngine(engine, group, alloc, served, self.scheme.map_cost_s)
                eng.gpus = frozenset(gpus)
                eng.make_lanes(self.scheme.lanes)
                self.engines.append(eng)
                self._on_group[id(group)].append(eng)
                for name in served:
                    self.routes.setdefault(name, []).append(eng)
        self.unplaced = sorted(set(self.models) - set(self.routes))  # their requests fail

    # -- running -----------------------------------------------------------------------------
    def run(
        self,
        requests: Sequence[SimRequest],
        horizon_s: float = math.inf,
        replace_at: Sequence[float] = (),
        replan: Callable[[float], Placement | None] | None = None,
    ) -> RecordBook:
        """Simulate `requests` (sorted by arrival) until all finish or `horizon_s` (the
        garbage collector runs rarely meanwhile: `sim.collector`)."""
        with rare_collections():
            return self._run(requests, horizon_s, replace_at, replan)

    def _run(
        self,
        requests: Sequence[SimRequest],
        horizon_s: float,
        replace_at: Sequence[float],
        replan: Callable[[float], Placement | None] | None,
    ) -> RecordBook:
        heap = self._heap
        n, i = len(requests), 0
        self._horizon_s = horizon_s
        self._due = {}
        for req in reversed(requests):  # each model's arrivals, next last
            self._due.setdefault(req.model, []).append(req.arrival_s)
        replans = sorted(replace_at) if replan is not None else []
        j = 0
        while True:
            while heap and heap[0][1] != self.groups[heap[0][2]].version:
                heapq.heappop(heap)
            t_ev = heap[0][0] if heap else math.inf
            t_arr = requests[i].arrival_s if i < n else math.inf
            t_rep = replans[j] if j < len(replans) else math.inf
            t = min(t_ev, t_arr, t_rep)
            if t == math.inf or t > horizon_s:
                break
            self.stats.events += 1
            if t_rep <= t_arr and t_rep <= t_ev:
                j += 1
                new = replan(t_rep) if replan is not None else None
                if new is not None:
                    self.apply_placement(new, t_rep)
                    self.stats.replacements += 1
            elif t_arr <= t_ev:
                self._arrive(requests[i])
                i += 1
            else:
                _, _, gi = heapq.heappop(heap)
                self._complete(self.groups[gi], t)
            if self._rerouted:
                self._send_on(t)
        self.stats.sim_end_s = min(horizon_s, max((g.last_t for g in self.groups), default=0.0))
        self.stats.gpu_busy_s = sum(g.busy_s * len(g.gpus) for g in self.groups)
        self.stats.preemptions = sum(e.engine.scheduler.stats.preemptions for e in self.engines)
        if horizon_s < math.inf:
            self._settle_horizons(horizon_s)
        self._settle_unfinished()
        return self.book

    def _settle_horizons(self, end: float) -> None:
        """Apply the iterations of multi-step plans still in flight at `end` that single steps
        would have applied by then (the engine's state then matches theirs)."""
        for eng in self.engines:
            for lane in eng.lanes:
                result, act = lane.result, lane.horizon
                if result is None or (act is None and lane.iterations is None and not lane.done):
                    continue
                if act is not None:
                    assert act.marks is not None
                    done = act.marks[-1] - act.remaining + (end - eng.group.last_t) * act.rate
                    steps = sum(1 for mark in act.marks if mark <= done + EPS)
                elif lane.iterations is not None:
                    steps = lane.at
                else:
                    steps = 0  # a chain's single step in flight: not applied yet
                if steps or lane.done:
                    result.num_steps = steps
                    self._finish_lane(lane, end)

    def _settle_unfinished(self) -> None:
        """Without per-token times requests do not stream (their tokens come with their final
        output): give the records of requests unfinished at the end the tokens they had, as
        a streaming client would have counted them."""
        if self.book.token_times:
            return
        records = self.book.records
        for eng in self.engines:
            for rid, seq in eng.engine.scheduler.seqs.items():
                rec = records.get(rid)
                if rec is not None and rec.first_token_s is not None:
                    rec.output_tokens = seq.num_output

    def _push(self, group: GpuGroup) -> None:
        group.rerate()
        t = group.next_finish()
        if t is not None:
            heapq.heappush(self._heap, (t, group.version, self._gid[id(group)]))

    def _arrive(self, req: SimRequest) -> None:
        t = req.arrival_s
        self._due[req.model].pop()
        m = self.models[req.model]
        self.book.arrive(
            req.request_id, req.model, t, req.prompt_tokens, m.ttft_slo_s, m.tpot_slo_s
        )
        routes = self.routes.get(req.model)
        if not routes:
            self.book.fail(req.request_id, "unplaced: the placement has no instance of it")
            return
        if self._reroute:
            self._sent_to[req.request_id] = (req, [])
        self._send(req, least_loaded(routes, req.model), t)

    def _send(self, req: SimRequest, eng: SimEngine, t: float) -> None:
        """Give `req` to `eng` at time `t` (its arrival, or a rejection it is re-routed
        after) and start the lane of its model if that lane is idle."""
        if self._reroute:
            self._sent_to[req.request_id][1].append(eng)
        try:
            eng.engine.add_request(
                req.request_id,
                req.model,
                [1] * req.prompt_tokens,
                req.output_tokens,
                arrival_s=req.arrival_s,
                stream=self.book.token_times,  # records are the same; per-token times need it
            )
        except InvalidRequestError as exc:
            self.book.fail(req.request_id, f"invalid: {exc}")
            self._release(req.request_id)
            return
        eng.outstanding += 1
        eng.outstanding_by[req.model] = eng.outstanding_by.get(req.model, 0) + 1
        self._engine_of[req.request_id] = eng
        lane = eng.lane_of[req.model]
        group = eng.group
        if lane.result is None:
            group.advance(t)
            if self._start(lane, t):
                self._push(group)
        elif lane.stepped:  # single steps: the next one takes the request
            if lane.spanning:
                self._cut(lane)  # (the group is left as single steps leave it)
        elif lane.spanning:  # its next plan takes the request: end the horizon
            group.advance(t)
            self._cut(lane)
            self._push(group)

    def _cut(self, lane: SimLane) -> None:
        """End the lane's multi-step plan after the iteration in progress."""
        result = lane.result
        assert result is not None
        act = lane.horizon
        if act is not None:
            lane.horizon = None
            steps = lane.eng.group.cut(act)
        else:
            assert lane.iterations is not None
            steps = lane.at + 1
            lane.iterations = lane.iterations[:steps]
        self.stats.steps -= result.num_steps - steps
        result.num_steps = steps

    def _cut_group(self, group: GpuGroup) -> None:
        """End every multi-step plan on `group` after its iteration in progress (a lane of
        the group is idle with work: single steps would retry it at each of their ends)."""
        cut = False
        for eng in self._on_group[id(group)]:
            for lane in eng.lanes:
                if lane.spanning and not lane.stepped:  # a stepped run is single steps
                    self._cut(lane)
                    cut = True
        if cut:
            self._push(group)

    def _start(self, lane: SimLane, now: float) -> bool:
        """Begin a step of an idle lane; True if it put work on its group."""
        eng = lane.eng
        engine = eng.engine
        max_steps, stepped = 1, False
        if self._may_plan_ahead():
            if not self._others_idle_with_work(lane):
                max_steps = self.max_steps
            elif self.step_runs and eng.solo:
                max_steps, stepped = self.max_steps, True
        if self.scheme.interference_aware:
            engine.scheduler.neighbours_in_flight = _neighbours_in_flight(eng)
        # a stepped run stands for single steps: it takes pages early only where the
        # allocator guarantees their grants
        plan: StepPlan = engine.begin_step(
            now, lane.models, max_steps, not eng.map_cost_s, not stepped
        )
        if plan.empty:
            self._collect(eng, engine.finish_step(StepResult(plan.step_id, {}, 0.0), now), now)
            if engine.has_work(lane.models):
                self._cut_group(eng.group)
            return False
        group = eng.group
        lane.result = None
        lane.iterations = None
        lane.stepped = stepped and plan.num_steps > 1
        lane.chained = self.chains and not lane.stepped
        lane.done = 0
        limit_s = math.inf
        if plan.num_steps > 1:
            # iterations that would start after the lane's next arrival (or the end) are cut
            due = [d[-1] for m in lane.models or eng.models if (d := self._due.get(m))]
            limit_s = min(due, default=math.inf)
            limit_s = min(limit_s, self._horizon_s) - now
        if plan.num_steps > 1 and len(plan.batches) == 1 and not lane.stepped:
            result, marks = self.coster.run_steps(plan, limit_s)
            extra = self._map_cost(eng)
            act = Activity(marks[-1] + extra, 0.0, lane, eng.gpus, marks=[m + extra for m in marks])
            lane.horizon = act
            works = [act]
        else:
            if plan.num_steps > 1:
                result, iterations = self.coster.run_iterations(plan, limit_s)
                lane.iterations, lane.at = iterations, 0
                costs = iterations[0]
            else:
                result, costs = self.coster.run(plan)
            extra = self._map_cost(eng)
            works = [
                Activity(work + (extra if k == 0 else 0.0), frac, lane, eng.gpus)
                for k, (work, frac) in enumerate(costs)
            ]
        self.stats.steps += result.num_steps
        lane.result = result
        lane.left = len(works)
        for act in works:
            group.add(act)
        if engine.has_pending_outputs():  # they make its idle lanes idle with work
            self._cut_group(group)
        return True

    def _may_span(self, lane: SimLane) -> bool:
        """Whether the lane may ask for a multi-step plan: tokens need no times of their own
        and no other lane of its group is idle with work. (An engine with a map cost asks
        for one that takes no page early: see the module docstring.)"""
        return self._may_plan_ahead() and not self._others_idle_with_work(lane)

    def _may_plan_ahead(self) -> bool:
        """Multi-step plans are on and tokens need no times of their own."""
        return self.max_steps >= 2 and not self.book.token_times

    def _others_idle_with_work(self, lane: SimLane) -> bool:
        """Whether another lane of the lane's group is idle with work (a stepped run
        between two iterations counts as idle: single steps would be)."""
        for other in self._on_group[id(lane.eng.group)]:
            for ln in other.lanes:
                if (
                    ln is not lane
                    and (ln.result is None or ln.boundary)
                    and other.engine.has_work(ln.models)
                ):
                    return True
        return False

    def _map_cost(self, eng: SimEngine) -> float:
        """Seconds of page (un)mapping done for this engine's models since its last step
        (only their own operations: the allocator is shared by the group's engines)."""
        if not eng.map_cost_s:
            return 0.0
        by_model = getattr(eng.allocator, "map_ops_by_model", {})
        ops = sum(by_model.get(m, 0) for m in eng.models)
        delta, eng.map_seen = ops - eng.map_seen, ops
        return max(delta, 0) * eng.map_cost_s

    def _complete(self, group: GpuGroup, now: float) -> None:
        group.advance(now)
        for act in group.pop_finished():
            lane = act.owner
            assert isinstance(lane, SimLane)
            lane.left -= 1
            if lane.left == 0 and lane.spanning and lane.horizon is None:
                if lane.stepped:
                    lane.boundary = True  # idle for the loop below, until its turn
                else:
                    self._next_iteration(lane)
            elif lane.left == 0:
                if lane.chained and self._fold(lane):
                    lane.boundary = True  # idle for the loop below, until its turn
                else:
                    self._finish_lane(lane, now)
        for eng in self._on_group[id(group)]:
            engine = eng.engine
            for lane in eng.lanes:
                if lane.boundary:
                    if lane.stepped:
                        self._step_on(lane, now)
                    else:
                        self._chain_on(lane, now)
                elif lane.result is None and engine.has_work(lane.models):
                    if self.skip_parked and engine.parked(lane.models):
                        self._cut_group(group)  # all its empty plan would have done
                    else:
                        self._start(lane, now)
        self._push(group)

    def _finish_lane(self, lane: SimLane, now: float, folded: bool = False) -> None:
        """Apply the lane's plan in flight (its iterations run) and collect the outputs. A
        chain's result stands for all its iterations (`folded`: the last plan's are counted
        in `done` already)."""
        lane.horizon = lane.iterations = None
        lane.stepped = False
        result, lane.result = lane.result, None
        assert result is not None
        if lane.done:
            steps = lane.done if folded else lane.done + result.num_steps
            engine = lane.eng.engine
            plan = engine.plan_in_flight(result.step_id)
            columns = self.coster.token_columns(plan, steps)
            if plan.num_steps > 1:
                result = StepResult(result.step_id, {}, 0.0, num_steps=steps, columns=columns)
            else:  # a one-step plan, not extended after all: its one token each
                firsts = {m: list(map(_first, col)) for m, col in columns.items()}
                result = StepResult(result.step_id, {}, 0.0, columns=firsts)
            lane.done = 0
        self._collect(lane.eng, lane.eng.engine.finish_step(result, now), now)

    def _fold(self, lane: SimLane) -> bool:
        """At the end of a chained lane's plan: if single steps would plan its batch going on
        (`Engine.fold_step`, which gives back pages taken for iterations not run), count its
        iterations into `done` and keep the engine's plan in flight (True); else False
        (finish it now, as single steps would)."""
        result = lane.result
        assert result is not None
        done = lane.done + result.num_steps
        if not lane.eng.engine.fold_step(result.step_id, done):
            return False
        lane.done = done
        lane.horizon = None
        return True

    def _chain_on(self, lane: SimLane, now: float) -> None:
        """A chain between two plans, at its turn among the group's lanes (where single
        steps would plan it): extend the engine's plan by the plan single steps would make
        (the same `max_steps`, grants and iterations), cost and start it as `_start` would;
        if that plan would differ, finish the chain here and plan the lane."""
        lane.boundary = False
        eng = lane.eng
        engine = eng.engine
        result = lane.result
        assert result is not None
        max_steps = self.max_steps if self._may_span(lane) else 1
        k = engine.extend_step(result.step_id, lane.done, max_steps, not eng.map_cost_s)
        if not k:
            self._finish_lane(lane, now, folded=True)
            self._start(lane, now)
            return
        batch = engine.plan_in_flight(result.step_id).batches[0]
        positions = [p + lane.done for p in batch.positions]
        if k > 1:  # as a multi-step plan of one batch (`_start`, `BatchCoster.run_steps`)
            due = [d[-1] for m in lane.models or eng.models if (d := self._due.get(m))]
            limit_s = min(min(due, default=math.inf), self._horizon_s) - now
            marks = self.coster.segment_marks(batch.key, positions, k, limit_s)
            extra = self._map_cost(eng)
            act = Activity(marks[-1] + extra, 0.0, lane, eng.gpus, marks=[m + extra for m in marks])
            lane.horizon = act
            steps = len(marks)
        else:  # as a single step (`BatchCoster.run`: a decode batch's fraction is 0)
            work = self.coster.decode_time(batch.key, positions)
            extra = self._map_cost(eng)
            act = Activity(work + extra, 0.0, lane, eng.gpus)
            steps = 1
        lane.result = StepResult(result.step_id, {}, 0.0, num_steps=steps)
        self.stats.steps += steps
        lane.left = 1
        eng.group.add(act)

    def _step_on(self, lane: SimLane, now: float) -> None:
        """A stepped run between two iterations, at its turn among the group's lanes:
        single steps would plan the lane now, asking for a multi-step plan if no other lane
        of the group is idle with work. If so, end the run here and plan it (as they
        would); else they would plan the same single step (a solo lane's plans depend on
        its engine's state and arrivals only, and an arrival ends the run): start the next
        iteration."""
        lane.boundary = False
        if self._others_idle_with_work(lane):
            self._next_iteration(lane)
            return
        self._cut(lane)
        self._finish_lane(lane, now)
        self._start(lane, now)

    def _next_iteration(self, lane: SimLane) -> None:
        """Start the next iteration of the lane's multi-batch multi-step plan."""
        assert lane.iterations is not None
        lane.at += 1
        costs = lane.iterations[lane.at]
        lane.left = len(costs)
        for work, frac in costs:
            lane.eng.group.add(Activity(work, frac, lane, lane.eng.gpus))

    def _collect(self, eng: SimEngine, outputs: list, now: float) -> None:
        if not outputs:
            return
        if self._reroute:
            outputs = [out for out in outputs if not self._reroutes(out)]
        self.book.apply(outputs, now)
        for out in outputs:
            if out.finished:
                self._release(out.request_id)

    def _free_slot(self, request_id: str) -> None:
        """The request has left its engine: free its routing slot there."""
        owner = self._engine_of.pop(request_id, None)
        if owner is not None:
            owner.outstanding -= 1
            owner.outstanding_by[self.book.records[request_id].model] -= 1

    def _release(self, request_id: str) -> None:
        """The request is done with (finished, failed or rejected by every instance)."""
        self._free_slot(request_id)
        if self._reroute:
            self._sent_to.pop(request_id, None)

    def _reroutes(self, out: RequestOutput) -> bool:
        """True when `out` is a rejection with an instance of the model left to try: the
        request is queued to be sent on (`_send_on`) instead of being recorded."""
        if out.finish_reason != REJECTED:
            return False
        req, tried = self._sent_to[out.request_id]
        untried = [e for e in self.routes.get(req.model, ()) if e not in tried]
        if not untried:
            return False
        self._free_slot(out.request_id)
        self._rerouted.append((req, untried))
        return True

    def _send_on(self, now: float) -> None:
        """Send each request rejected at this event to its least loaded untried instance."""
        rerouted, self._rerouted = self._rerouted, []
        for req, untried in rerouted:
            self._send(req, least_loaded(untried, req.model), now)


_first = itemgetter(0)


def least_loaded(routes: Sequence[SimEngine], model: str) -> SimEngine:
    """The engine a new request of `model` goes to: the fewest requests of `model` in flight,
    then the fewest in all, then the first. `cluster.gateway.Gateway.route` has the same
    order but counts each request's prompt + max tokens; counting tokens here measured worse
    in overload (480 req/s SLO x10, 40 s: fineserve_plus 0.611 vs 0.636, prism 0.336 vs
    0.345), so the simulator counts requests."""
    return min(routes, key=lambda e: (e.outstanding_by.get(model, 0), e.outstanding))


def gpu_domains(sets: Sequence[tuple[int, ...]]) -> list[list[tuple[int, ...]]]:
    """GPU sets grouped into connected components of overlap (input order kept)."""
    domains: list[list[tuple[int, ...]]] = []
    covered: list[set[int]] = []
    for gpus in sets:
        hits = [i for i, c in enumerate(covered) if c.intersection(gpus)]
        merged, cover = [gpus], set(gpus)
        for i in reversed(hits):
            merged = domains.pop(i) + merged
            cover |= covered.pop(i)
        domains.append(merged)
        covered.append(cover)
    return domains


def group_arenas(
    placement: Placement, models: dict[str, SimModel], gpu: GpuSpec
) -> dict[tuple[int, ...], int]:
    """KV bytes per rank for each GPU set, from what the weights on its GPUs leave.

    Sets are served widest first; each takes, on every one of its GPUs, the smallest over them
    of an even split of what is left between the sets still to be served there. A set on one
    GPU, served last there, so takes everything its wider neighbours left (an even split
    alone would strand the part a TP set cannot use on its roomier GPUs).

    Invariants: no GPU gives out more than its weights leave; a set never gets less than an
    even split of every one of its GPUs' leftover memory would give it."""
    free = [gpu.usable_bytes] * placement.num_gpus
    sets_on: list[int] = [0] * placement.num_gpus
    groups = placement.groups()
    for inst in placement.instances:
        for g in inst.gpus:
            free[g] -= models[inst.model].mtype.weight_bytes_per_gpu
    for gpus in groups:
        for g in gpus:
            sets_on[g] += 1
    out = {}
    for gpus in sorted(groups, key=len, reverse=True):  # stable: equal widths keep their order
        arena = min(free[g] // sets_on[g] for g in gpus)
        if arena <= 0:
            raise ValueError(f"models {groups[gpus]} leave no KV memory on GPUs {gpus}")
        out[gpus] = arena
        for g in gpus:
            free[g] -= arena
            sets_on[g] -= 1
    return {gpus: out[gpus] for gpus in groups}


def _neighbours_in_flight(eng: SimEngine) -> int:
    """Plans of other engines running on any of `eng`'s GPUs (each lane once): what slows
    `eng`'s steps besides its own lanes (`LocalScheduler.neighbours_in_flight`)."""
    gpus = eng.gpus
    lanes = {
        id(a.owner)
        for a in eng.group.active
        if isinstance(a.owner, SimLane) and a.owner.eng is not eng and not gpus.isdisjoint(a.gpus)
    }
    return len(lanes)
