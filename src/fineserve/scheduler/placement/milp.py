"""Exact placement for small clusters (a yardstick for the greedy policies), solved by HiGHS.

Same options as the greedy policies (per TP degree the fewest feasible replicas, and up to two
more). Binary ``z[i,o]``: model ``i`` uses option ``o``; binary ``x[i,o,G]``: one replica of it
on TP group ``G``. Constraints: at most one option per model; ``sum_G x[i,o,G] = replicas_o *
z[i,o]`` (so replicas sit on distinct groups); per GPU, weights + KV need <= usable bytes and
busy share <= ``util_cap``; ``t >=`` every GPU's busy share. Objective (lexicographic through
weights): maximise the placed request rate, then minimise the busiest GPU's share ``t``, then
the GPU equivalents used. The result is scored by the same predictor as every other policy.
"""

from __future__ import annotations

from typing import Any

from fineserve.scheduler.placement.predict import evaluate
from fineserve.scheduler.placement.problem import PlacementProblem
from fineserve.scheduler.placement.sizing import Option, Sizer
from fineserve.scheduler.placement.state import fallback_options
from fineserve.scheduler.placement.types import InstancePlacement, Placement

TIME_LIMIT_S = 20.0


def milp_policy(problem: PlacementProblem, sizer: Sizer) -> Placement:
    """Optimal placement under the linear model above (HiGHS, ``TIME_LIMIT_S`` at most)."""
    import highspy

    h = highspy.Highs()
    h.silent()
    h.setOptionValue("time_limit", TIME_LIMIT_S)
    h.setOptionValue("threads", 1)
    options = {m.name: fallback_options(sizer, sizer.options(m)) for m in problem.models}
    rates = [m.rate for m in problem.models if m.rate > 0]
    eps_t = 0.5 * min(rates, default=1.0)
    eps_c = 0.01 * eps_t / max(1, problem.cluster.num_gpus)
    t = h.addVariable(lb=0.0, ub=problem.options.util_cap)
    objective: Any = -eps_t * t
    per_gpu_mem: dict[str, list[Any]] = {g: [] for g in problem.cluster.gpu_ids()}
    per_gpu_util: dict[str, list[Any]] = {g: [] for g in problem.cluster.gpu_ids()}
    chosen: list[tuple[Option, Any, list[tuple[tuple[str, ...], Any]]]] = []
    for m in problem.models:
        zs = []
        for opt in options[m.name]:
            z = h.addBinary()
            zs.append(z)
            placed = []
            for grp in problem.cluster.groups(opt.tp):
                x = h.addBinary()
                placed.append((grp, x))
                for g in grp:
                    per_gpu_mem[g].append(opt.mem_per_gpu * x)
                    per_gpu_util[g].append(opt.util * x)
            h.addConstr(sum(x for _, x in placed) == opt.replicas * z)
            objective = objective + (max(m.rate, 1e-3) - eps_c * opt.cost) * z
            chosen.append((opt, z, placed))
        h.addConstr(sum(zs) <= 1)
    for g in problem.cluster.gpu_ids():
        if per_gpu_mem[g]:
            h.addConstr(sum(per_gpu_mem[g]) <= problem.cluster.usable_bytes)
            h.addConstr(sum(per_gpu_util[g]) <= t)
    h.maximize(objective)
    instances = _read_solution(h, chosen)
    return evaluate(problem, "milp", instances, sizer=sizer)


def _read_solution(
    h: Any, chosen: list[tuple[Option, Any, list[tuple[tuple[str, ...], Any]]]]
) -> list[InstancePlacement]:
    instances: list[InstancePlacement] = []
    for opt, z, placed in chosen:
        if h.val(z) < 0.5:
            continue
        groups = [grp for grp, x in placed if h.val(x) > 0.5]
        for replica, grp in enumerate(groups):
            instances.append(
                InstancePlacement(
                    opt.model,
                    opt.tp,
                    replica,
                    grp,
                    opt.rate_per_replica,
                    opt.min_batch,
                    opt.max_batch,
                )
            )
    return instances
