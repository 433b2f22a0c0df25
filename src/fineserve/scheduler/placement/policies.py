"""Greedy placement policies: FineServe (as published) and the baselines it is compared with.

Each policy is ``policy(problem, sizer) -> Placement`` and raises :class:`InfeasibleError` when
a model has no feasible option even alone on an empty group. A model whose options all fail to
fit beside the others is reported in ``Placement.unplaced`` (predicted attainment 0).
"""

from __future__ import annotations

import heapq
from dataclasses import replace

from fineserve.scheduler.placement.predict import evaluate, predict
from fineserve.scheduler.placement.problem import ModelDemand, PlacementProblem
from fineserve.scheduler.placement.sizing import Option, Sizer
from fineserve.scheduler.placement.state import ClusterState, Group, fallback_options
from fineserve.scheduler.placement.types import Placement

SATURATED = 1.0  # busy share per replica (of a whole group) beyond which a model is saturated
LEAN_SATURATED = 1.5  # the same for `fineserve_lean`
HEAVY_TP = 0.5  # a TP > 1 replica with this busy share of its own takes no saturated 8B replica


def _footprint(opts: list[Option]) -> float:
    o = opts[0]
    return float(o.replicas * o.tp * o.mem_per_gpu)


def fineserve_policy(
    problem: PlacementProblem, sizer: Sizer, saturated: float = SATURATED
) -> Placement:
    """FineServe's global scheduler.

    Per model and TP degree: the smallest batch that sustains the rate (``min_batch``) and the
    largest that meets the SLO and fits memory (``max_batch``); replicas are added while none
    fits; the cheapest feasible option (GPU equivalents) is tried first. Models go largest
    memory footprint first; each replica goes to the fitting group whose leftover memory holds
    the most average-size KV pages of its precision mix (MME best fit). If no group fits, the
    next option (another TP degree or more replicas) is tried. A group is taken only if the
    predicted attainment of every replica on its GPUs stays at the target (checked by the
    predictor on that group alone).

    When that published pass cannot place every model at the target (overload), the
    placement is rebuilt by :func:`_graceful` instead (docs/placement.md, "Beyond the paper:
    overload"); ``saturated`` is its phase-3 threshold.
    """
    per_model = {m.name: sizer.options(m) for m in problem.models}
    order = sorted(problem.models, key=lambda m: (-_footprint(per_model[m.name]), m.name))
    state = ClusterState(problem, sizer)
    for m in order:
        opts = fallback_options(sizer, per_model[m.name])
        if not any(state.place_replicas(o, state.mme_pages, accept=_ok) for o in opts):
            return _graceful(problem, sizer, per_model, order, saturated)
    return evaluate(problem, "fineserve", state.instances, sizer=sizer)


def fineserve_lean_policy(problem: PlacementProblem, sizer: Sizer) -> Placement:
    """`fineserve` whose overload phase 3 adds a replica only while each replica of a model
    would carry more than ``LEAN_SATURATED`` groups' busy share (not 1): every replica's
    weights take KV memory from its co-tenants, which in long overloaded runs is what limits
    them. Identical to `fineserve` whenever the published pass places every model."""
    return fineserve_policy(problem, sizer, saturated=LEAN_SATURATED)


def _graceful(
    problem: PlacementProblem,
    sizer: Sizer,
    per_model: dict[str, list[Option]],
    order: list[ModelDemand],
    saturated: float = SATURATED,
) -> Placement:
    """Overload: every model first at its minimum footprint, then replicas by marginal goodput.

    1. Models largest footprint first, one replica each: of the model's options (cheapest
       first), the first whose single replica (sized for the option's replica count) fits an
       MME best-fit group the predictor approves; if none does, the fitting group (memory only)
       where the whole placement's predicted goodput is highest, so a model is never left
       out while memory allows, and a heavy TP group takes a co-located model only when the
       predictor says the cluster gains from it.
    2. The remaining replicas of every model's chosen option, one at a time, highest predicted
       goodput per GPU first (``rate per replica / GPU equivalents per replica``), each to an
       approved MME best-fit group, else where it raises the predicted goodput of the whole
       placement most (memory checked; the predictor judges the load); if nowhere gains,
       the model gets no more. A model never gets more replicas than its option (what its
       rate needs).
    3. Saturated models (:func:`_saturated`): while a model's replicas each carry more than
       a whole group's busy share at its full rate, it gets another replica on the
       least-loaded group with memory, busiest model first, still within its option.
    """
    state = ClusterState(problem, sizer)
    chosen: dict[str, Option] = {}
    for m in order:
        opts = fallback_options(sizer, per_model[m.name])
        for o in opts:
            single = replace(o, replicas=1)
            if state.place_one(single, 0, state.mme_pages, accept=_ok) is not None:
                chosen[m.name] = o
                break
        else:
            best = _best_by_goodput(problem, sizer, state, [replace(o, replicas=1) for o in opts])
            if best is not None:
                single, grp = best
                state.add(single, grp, 0)
                chosen[m.name] = _orig(opts, single)
    heap = [(-_per_gpu(o), m, 1) for m, o in chosen.items() if o.replicas > 1]
    heapq.heapify(heap)
    while heap:
        key, name, k = heapq.heappop(heap)
        o = chosen[name]
        one = replace(o, replicas=1)
        grp = state.place_one(one, k, state.mme_pages, exclude=state.groups_of(name), accept=_ok)
        if grp is None and not _add_if_gain(problem, sizer, state, one, k):
            continue
        if k + 1 < o.replicas:
            heapq.heappush(heap, (key, name, k + 1))
    _saturated(problem, sizer, state, chosen, saturated)
    return evaluate(problem, "fineserve", state.instances, sizer=sizer)


def _saturated(
    problem: PlacementProblem,
    sizer: Sizer,
    state: ClusterState,
    chosen: dict[str, Option],
    threshold: float = SATURATED,
) -> None:
    """Overload phase 3: replicas for models that one replica per group cannot carry.

    A model is saturated while ``rate / replicas placed x work > threshold`` (default
    ``SATURATED`` = 1: each replica alone would need more than its whole group), so early
    rejection drops most of its traffic however light its co-tenants are (phase 2 leaves it
    there when the predictor, which sees the cluster overloaded everywhere, finds no gain).
    Busiest first, one replica at a time on the least-loaded group with memory for it
    (:func:`_add_least_loaded`), until it is no longer saturated, reaches its option's
    replica count, or nothing fits. Invariant: no model ends with more replicas than its
    option.
    """

    def load(name: str) -> float:
        m = sizer.model(name)
        return m.rate / max(1, len(state.groups_of(name))) * sizer.work(m, chosen[name].tp)

    def wants_more(name: str) -> bool:
        n = len(state.groups_of(name))
        return 0 < n < chosen[name].replicas and load(name) > threshold

    heap = [(-load(n), n) for n in chosen if wants_more(n)]
    heapq.heapify(heap)
    while heap:
        _, name = heapq.heappop(heap)
        one = replace(chosen[name], replicas=1)
        if _add_least_loaded(problem, sizer, state, one) and wants_more(name):
            heapq.heappush(heap, (-load(name), name))


def _heavy_gpus(sizer: Sizer, state: ClusterState) -> set[str]:
    """GPUs of TP > 1 replicas whose own busy share (model rate over its replicas placed)
    reaches ``HEAVY_TP``: an 8B step there slows every GPU of that group's step."""
    count: dict[str, int] = {}
    for i in state.instances:
        count[i.model] = count.get(i.model, 0) + 1
    out: set[str] = set()
    for i in state.instances:
        m = sizer.model(i.model)
        if i.tp > 1 and m.rate / count[i.model] * sizer.work(m, i.tp) >= HEAVY_TP:
            out.update(i.gpus)
    return out


def _add_least_loaded(
    problem: PlacementProblem, sizer: Sizer, state: ClusterState, one: Option
) -> bool:
    """Add one more replica of ``one`` on the group with the lowest busiest-GPU busy share
    (ties: most free memory) among those with memory for it, not already serving the model
    and (for TP = 1) not on a heavy TP group's GPUs; False when none qualifies."""
    mine = state.groups_of(one.model)
    heavy = _heavy_gpus(sizer, state) if one.tp == 1 else set()
    fitting = [
        grp
        for grp in problem.cluster.groups(one.tp)
        if grp not in mine
        and not heavy.intersection(grp)
        and state.fits(one, grp, check_util=False)
    ]
    if not fitting:
        return False
    best = min(
        fitting,
        key=lambda g: (max(state.util[x] for x in g), -min(state.free_bytes(x) for x in g)),
    )
    state.add(one, best, len(mine))
    return True


def _ok(state: ClusterState, group: Group) -> bool:
    return state.local_attainment_ok(group)


def _orig(opts: list[Option], single: Option) -> Option:
    """The option ``single`` (one replica of it) was cut from."""
    return next(o for o in opts if replace(o, replicas=1) == single)


def _per_gpu(o: Option) -> float:
    """Requests per second one more replica of ``o`` serves per GPU equivalent it costs."""
    return o.rate_per_replica / max(o.cost / o.replicas, 1e-9)


def _goodput(problem: PlacementProblem, sizer: Sizer, state: ClusterState) -> float:
    return predict(problem, state.instances, sizer=sizer)[0].goodput


def _best_by_goodput(
    problem: PlacementProblem, sizer: Sizer, state: ClusterState, singles: list[Option]
) -> tuple[Option, Group] | None:
    """The (option, group) fitting memory where the whole placement's goodput is highest."""
    best: tuple[float, int, Option, Group] | None = None
    for rank, o in enumerate(singles):
        for grp in problem.cluster.groups(o.tp):
            if not state.fits(o, grp, check_util=False):
                continue
            snap = state._snapshot()
            state.add(o, grp, 0)
            g = _goodput(problem, sizer, state)
            state._restore(snap)
            if best is None or (g, -rank) > (best[0], -best[1]):
                best = (g, rank, o, grp)
    return None if best is None else (best[2], best[3])


def _add_if_gain(
    problem: PlacementProblem, sizer: Sizer, state: ClusterState, one: Option, replica: int
) -> bool:
    """Add replica ``replica`` of ``one`` where it raises the predicted goodput most (memory and
    only, the predictor judges the load; not on a group the model already uses); False when
    nowhere gains."""
    base = _goodput(problem, sizer, state)
    mine = set(state.groups_of(one.model))
    best: tuple[float, Group] | None = None
    for grp in problem.cluster.groups(one.tp):
        if grp in mine or not state.fits(one, grp, check_util=False):
            continue
        snap = state._snapshot()
        state.add(one, grp, replica)
        g = _goodput(problem, sizer, state)
        state._restore(snap)
        if g > base + 1e-9 and (best is None or g > best[0]):
            best = (g, grp)
    if best is None:
        return False
    state.add(one, best[1], replica)
    return True


def prism_policy(problem: PlacementProblem, sizer: Sizer) -> Placement:
    """Prism-style: KV pressure = sum(rate / TTFT SLO) / free memory after weights.

    Each model takes its smallest feasible TP degree; models in decreasing rate/SLO order go
    to the group that keeps the busiest GPU's pressure lowest. Only memory is checked, not the
    compute share (Prism relies on on-demand KV paging).
    """
    per_model = {
        m.name: sorted(sizer.options(m), key=lambda o: (o.tp, o.replicas)) for m in problem.models
    }
    order = sorted(problem.models, key=lambda m: (-m.rate / m.ttft_slo_s, m.name))
    state = ClusterState(problem, sizer)
    usable = problem.cluster.usable_bytes

    def score(opt: Option, group: Group) -> float:
        m = sizer.model(opt.model)
        worst = 0.0
        for g in group:
            free = max(1, usable - state.weights[g] - opt.weight_bytes_per_gpu)
            worst = max(worst, (state.pressure[g] + opt.rate_per_replica / m.ttft_slo_s) / free)
        return -worst

    for m in order:
        for opt in fallback_options(sizer, per_model[m.name]):
            if state.place_replicas(opt, score, check_util=False):
                break
    return evaluate(problem, "prism", state.instances, sizer=sizer)


def muxserve_policy(problem: PlacementProblem, sizer: Sizer) -> Placement:
    """MuxServe-style (Duan et al., ICML 2024, its greedy placement): every model is placed
    exactly once, as one LLM on one mesh, models in decreasing computation requirement
    (request rate x GPU-seconds per request x mesh size), each on the fitting mesh with the
    least compute load; one uniform KV block size per GPU (the largest co-located page), as
    MuxServe's unified KV cache does.

    MuxServe colocates every LLM rather than refusing one, so only memory is checked, not the
    busy share; it scales a popular LLM with a larger mesh, never with replicas. Of a model's
    TP degrees, the smallest whose single instance the sizer finds feasible is used, else the
    largest. The instance keeps the KV need of that degree's sized replica (what one replica
    of the model needs at its batch), and its load is the model's whole rate.
    """
    singles = {m.name: _one_instance(sizer, m) for m in problem.models}
    order = sorted(problem.models, key=lambda m: (-singles[m.name].cost, m.name))
    state = ClusterState(problem, sizer)

    def score(opt: Option, group: Group) -> float:
        return -max(state.util[g] for g in group)

    for m in order:
        state.place_replicas(singles[m.name], score, check_util=False)
    return evaluate(problem, "muxserve", state.instances, kv_scheme="uniform", sizer=sizer)


def _one_instance(sizer: Sizer, m: ModelDemand) -> Option:
    """``m`` as a single instance carrying its whole rate (see :func:`muxserve_policy`)."""
    opts = sizer.options(m)
    single = [o for o in opts if o.replicas == 1]
    base = min(single, key=lambda o: o.tp) if single else max(opts, key=lambda o: o.tp)
    util = m.rate * sizer.work(m, base.tp)
    return replace(base, replicas=1, rate_per_replica=m.rate, util=util, cost=util * base.tp)


def one_per_gpu_policy(problem: PlacementProblem, sizer: Sizer) -> Placement:
    """No sharing: every replica gets GPUs of its own (static partition, smallest TP first)."""
    per_model = {
        m.name: sorted(sizer.options(m), key=lambda o: (o.tp, o.replicas)) for m in problem.models
    }
    order = sorted(problem.models, key=lambda m: (-_footprint(per_model[m.name]), m.name))
    state = ClusterState(problem, sizer)

    def score(opt: Option, group: Group) -> float:
        return -problem.cluster.gpu_ids().index(group[0])

    for m in order:
        for opt in fallback_options(sizer, per_model[m.name]):
            if state.place_replicas(opt, score, only_empty=True):
                break
    return evaluate(problem, "one_per_gpu", state.instances, kv_scheme="static", sizer=sizer)
