"""Greedy placement policies: FineServe (as published) and the baselines it is compared with.

Each policy is ``policy(problem, sizer) -> Placement`` and raises :class:`InfeasibleError` when
a model has no feasible option even alone on an empty group. A model whose options all fail to
fit beside the others is reported in ``Placement.unplaced`` (predicted attainment 0).
"""

from __future__ import annotations

from fineserve.scheduler.placement.predict import evaluate
from fineserve.scheduler.placement.problem import PlacementProblem
from fineserve.scheduler.placement.sizing import Option, Sizer
from fineserve.scheduler.placement.state import ClusterState, Group, fallback_options
from fineserve.scheduler.placement.types import Placement


def _footprint(opts: list[Option]) -> float:
    o = opts[0]
    return float(o.replicas * o.tp * o.mem_per_gpu)


def fineserve_policy(problem: PlacementProblem, sizer: Sizer) -> Placement:
    """FineServe's global scheduler.

    Per model and TP degree: the smallest batch that sustains the rate (``min_batch``) and the
    largest that meets the SLO and fits memory (``max_batch``); replicas are added while none
    fits; the cheapest feasible option (GPU equivalents) is tried first. Models go largest
    memory footprint first; each replica goes to the fitting group whose leftover memory holds
    the most average-size KV pages of its precision mix (MME best fit). If no group fits, the
    next option (another TP degree or more replicas) is tried. A group is taken only if the
    predicted attainment of every replica on its GPUs stays at the target (checked by the
    predictor on that group alone); if no option passes, the best MME fit that merely fits
    memory and busy share is used.
    """
    per_model = {m.name: sizer.options(m) for m in problem.models}
    order = sorted(problem.models, key=lambda m: (-_footprint(per_model[m.name]), m.name))
    state = ClusterState(problem, sizer)
    for m in order:
        opts = fallback_options(sizer, per_model[m.name])
        if any(state.place_replicas(o, state.mme_pages, accept=_ok) for o in opts):
            continue
        any(state.place_replicas(o, state.mme_pages) for o in opts)  # best effort
    return evaluate(problem, "fineserve", state.instances, sizer=sizer)


def _ok(state: ClusterState, group: Group) -> bool:
    return state.local_attainment_ok(group)


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
    """MuxServe-style: models by compute demand (rate x work), highest first, each to the
    fitting group with the least compute load; one uniform KV block size per GPU (the largest
    co-located page), as MuxServe's unified KV cache does."""
    per_model = {m.name: sizer.options(m) for m in problem.models}
    order = sorted(
        problem.models, key=lambda m: (-per_model[m.name][0].util * per_model[m.name][0].tp, m.name)
    )
    state = ClusterState(problem, sizer)

    def score(opt: Option, group: Group) -> float:
        return -max(state.util[g] for g in group)

    for m in order:
        for opt in fallback_options(sizer, per_model[m.name]):
            if state.place_replicas(opt, score):
                break
    return evaluate(problem, "muxserve", state.instances, kv_scheme="uniform", sizer=sizer)


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
