"""Placements the simulator runs: which model instance lives on which GPUs.

A `Placement` lists instances (model name, GPU ids); an instance's TP degree is the number of
its GPUs. Instances on exactly the same GPU set are *co-located* and share that set's KV memory
and compute. The simulator takes any `Placement`; `fixed_placement` is the simple built-in one
used until the placement policies of `fineserve.scheduler.placement` are available:

- TP > 1 models get dedicated consecutive GPU groups, largest first;
- TP = 1 models go, busiest first, to the single GPU with the best score among those where its
  weights fit with at least `min_kv_bytes` left: `load` (least summed rate x prefill work, used
  by static and MuxServe), `pressure` (Prism's KV-pressure ratio: least sum(rate/SLO) over free
  KV bytes), `mme` (FineServe: most free KV tokens per unit of KV demand after adding it).

Invariants: every model of the input appears at least once; no GPU holds more weights than its
usable memory minus `min_kv_bytes`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fineserve.sim.catalog import GIB, GpuSpec, SimModel

SCORES = ("load", "pressure", "mme")


@dataclass(frozen=True)
class PlacedInstance:
    """One instance of `model` on `gpus` (TP = len(gpus))."""

    model: str
    gpus: tuple[int, ...]

    @property
    def tp(self) -> int:
        return len(self.gpus)


@dataclass(frozen=True)
class Placement:
    """Instances over `num_gpus` GPUs, made by `policy`."""

    instances: tuple[PlacedInstance, ...]
    num_gpus: int
    policy: str = "fixed"

    def groups(self) -> dict[tuple[int, ...], list[str]]:
        """GPU set -> models co-located on exactly that set (insertion order kept)."""
        out: dict[tuple[int, ...], list[str]] = {}
        for inst in self.instances:
            out.setdefault(inst.gpus, []).append(inst.model)
        return out


class PlacementError(ValueError):
    """The models do not fit the cluster."""


def fixed_placement(
    models: Sequence[SimModel],
    num_gpus: int,
    gpu: GpuSpec,
    score: str = "load",
    min_kv_bytes: int = 8 * GIB,
) -> Placement:
    """The built-in placement (see the module docstring)."""
    if score not in SCORES:
        raise ValueError(f"unknown placement score {score!r}; choose one of {SCORES}")
    instances: list[PlacedInstance] = []
    next_gpu = 0
    for m in sorted((m for m in models if m.mtype.tp > 1), key=lambda m: -m.mtype.weight_bytes):
        tp = m.mtype.tp
        if next_gpu + tp > num_gpus:
            raise PlacementError(f"no {tp} free GPUs left for {m.name}")
        instances.append(PlacedInstance(m.name, tuple(range(next_gpu, next_gpu + tp))))
        next_gpu += tp
    singles = [m for m in models if m.mtype.tp == 1]
    free_gpus = list(range(next_gpu, num_gpus))
    if singles and not free_gpus:
        raise PlacementError("no GPU left for the TP=1 models")
    on_gpu: dict[int, list[SimModel]] = {g: [] for g in free_gpus}
    for m in sorted(singles, key=lambda m: -_work(m)):
        best = _best_gpu(m, on_gpu, gpu, score, min_kv_bytes)
        if best is None:
            raise PlacementError(f"{m.name} fits on no GPU with {min_kv_bytes} B of KV left")
        on_gpu[best].append(m)
        instances.append(PlacedInstance(m.name, (best,)))
    return Placement(tuple(instances), num_gpus, f"fixed-{score}")


def _work(m: SimModel) -> float:
    """Relative compute demand: rate x weight bytes (decode cost grows with weights read)."""
    return m.rate * (m.mtype.weight_bytes / m.mtype.tp + 1e9)


def _free_kv(ms: Sequence[SimModel], gpu: GpuSpec) -> int:
    return gpu.usable_bytes - sum(m.mtype.weight_bytes_per_gpu for m in ms)


def _best_gpu(
    m: SimModel,
    on_gpu: Mapping[int, list[SimModel]],
    gpu: GpuSpec,
    score: str,
    min_kv_bytes: int,
) -> int | None:
    best, best_val = None, float("inf")
    for g, ms in on_gpu.items():
        after = [*ms, m]
        free = _free_kv(after, gpu)
        if free < min_kv_bytes:
            continue
        if score == "load":
            val = sum(_work(x) for x in after)
        elif score == "pressure":
            val = sum(x.rate / (x.ttft_slo_s or 1.0) for x in after) / free
        else:  # mme: fewest free KV tokens per unit of KV demand is worst
            demand = sum(x.rate * x.mtype.kv.bytes_per_token for x in after)
            val = -free / max(demand, 1e-9)
        if val < best_val:
            best, best_val = g, val
    return best


def fill_unplaced(
    placement: Placement,
    models: Sequence[SimModel],
    gpu: GpuSpec,
    min_kv_bytes: int = 4 * GIB,
    gpus_per_node: int = 8,
) -> tuple[Placement, tuple[str, ...]]:
    """Place, best effort, every model `placement` left out: busiest first, one instance at its
    catalogue TP on the aligned GPU group where its weights leave the most KV memory per unit
    of KV demand already there (at least `min_kv_bytes` per GPU). What an operator does with a
    model the policy would not admit: serve it on the leftover memory rather than refuse all of
    its requests. The same rule for every scheme. Returns the placement and the models that
    still fit nowhere."""
    by_name = {m.name: m for m in models}
    placed = {i.model for i in placement.instances}
    free = [gpu.usable_bytes] * placement.num_gpus
    demand = [0.0] * placement.num_gpus
    for inst in placement.instances:
        m = by_name[inst.model]
        for g in inst.gpus:
            free[g] -= m.mtype.weight_bytes_per_gpu
            demand[g] += m.rate * m.mtype.kv.bytes_per_token / inst.tp
    instances, left = list(placement.instances), []
    for m in sorted((m for m in models if m.name not in placed), key=lambda m: -m.rate):
        tp, need = m.mtype.tp, m.mtype.weight_bytes_per_gpu
        step = min(tp, gpus_per_node)
        best, best_val = None, -1.0
        for start in range(0, placement.num_gpus - tp + 1, step):
            grp = tuple(range(start, start + tp))
            room = min(free[g] for g in grp) - need
            if room < min_kv_bytes:
                continue
            val = room / (1.0 + max(demand[g] for g in grp))
            if val > best_val:
                best, best_val = grp, val
        if best is None:
            left.append(m.name)
            continue
        for g in best:
            free[g] -= need
            demand[g] += m.rate * m.mtype.kv.bytes_per_token / tp
        instances.append(PlacedInstance(m.name, best))
    return Placement(tuple(instances), placement.num_gpus, placement.policy), tuple(left)


def policy_problem(
    models: Sequence[SimModel],
    num_gpus: int,
    gpu: GpuSpec,
    cost_model: object,
    prompt_len: int,
    output_len: int,
    gpus_per_node: int = 8,
) -> Any:
    """A `scheduler.placement` problem for these models, each fixed at its catalogue TP."""
    from fineserve.scheduler.placement.problem import ClusterSpec, ModelDemand, PlacementProblem

    if num_gpus % gpus_per_node:
        gpus_per_node = num_gpus
    demands = tuple(
        ModelDemand(
            m.name, m.mtype.arch, m.mtype.qformat, m.mtype.weight_bytes,
            {m.mtype.tp: m.mtype.kv}, max(m.rate, 0.0), m.ttft_slo_s or 1e9, m.tpot_slo_s,
            prompt_len=max(1, prompt_len), output_len=max(1, output_len),
            tp_options=(m.mtype.tp,),
        )
        for m in models
    )  # fmt: skip
    cluster = ClusterSpec(
        num_gpus // gpus_per_node, gpus_per_node, gpu.memory_bytes, gpu.reserve_bytes, gpu.name
    )
    return PlacementProblem(demands, cluster, cost_model)  # type: ignore[arg-type]


def capped_problem(problem: Any, iters: int = 24) -> tuple[Any, dict[str, float]]:
    """`problem` with every model's rate capped at what its options can serve within SLO.

    A model the sizer finds infeasible at its rate (`InfeasibleError`: even its most replicas
    cannot sustain the rate within the SLO) is planned at the largest rate that is feasible
    (bisection, to 1/2**iters of its rate); its requests still arrive at the real rate and are
    served best effort, so the excess shows up as SLO misses, never as a crash. A model that
    is infeasible at any rate (memory, prefill > TTFT SLO) is planned at rate 0 here and left
    out by `drop_infeasible`. Returns the capped problem and {model: planned rate} for the
    capped models only.
    """
    from fineserve.scheduler.placement.problem import InfeasibleError
    from fineserve.scheduler.placement.sizing import Sizer

    sizer = Sizer(problem)
    caps: dict[str, float] = {}
    for m in problem.models:
        try:
            sizer.options(m)
            continue
        except InfeasibleError:
            pass
        lo, hi = 0.0, m.rate
        for _ in range(iters):
            mid = (lo + hi) / 2
            trial = Sizer(problem.with_rates({m.name: mid}))
            try:
                trial.options(trial.model(m.name))
                lo = mid
            except InfeasibleError:
                hi = mid
        caps[m.name] = lo
    return (problem.with_rates(caps) if caps else problem), caps


def drop_infeasible(problem: Any) -> tuple[Any, tuple[str, ...]]:
    """`problem` without the models no option can serve at any rate (and their names)."""
    from fineserve.scheduler.placement.problem import InfeasibleError, PlacementProblem
    from fineserve.scheduler.placement.sizing import Sizer

    sizer = Sizer(problem.with_rates({m.name: 0.0 for m in problem.models}))
    keep, dropped = [], []
    for m in problem.models:
        try:
            sizer.options(sizer.model(m.name))
            keep.append(m)
        except InfeasibleError:
            dropped.append(m.name)
    if not dropped:
        return problem, ()
    out = PlacementProblem(tuple(keep), problem.cluster, problem.cost_model, problem.options)
    return out, tuple(dropped)


def feasible_problem(problem: Any) -> tuple[Any, dict[str, float], tuple[str, ...]]:
    """`capped_problem` then `drop_infeasible`: (problem, capped rates, dropped models)."""
    capped, caps = capped_problem(problem)
    out, dropped = drop_infeasible(capped)
    return out, {k: v for k, v in caps.items() if k not in dropped}, dropped


def from_policy(result: Any, num_gpus: int, gpus_per_node: int = 8) -> Placement:
    """Our `Placement` from a `scheduler.placement.Placement` (GPU "n{n}g{g}" -> n*8+g)."""
    if num_gpus % gpus_per_node:
        gpus_per_node = num_gpus

    def gid(name: str) -> int:
        node, index = name[1:].split("g")
        return int(node) * gpus_per_node + int(index)

    instances = tuple(
        PlacedInstance(i.model, tuple(gid(g) for g in i.gpus)) for i in result.instances
    )
    return Placement(instances, num_gpus, result.policy)


def policy_placement(
    models: Sequence[SimModel],
    num_gpus: int,
    gpu: GpuSpec,
    policy: str,
    cost_model: object,
    prompt_len: int,
    output_len: int,
) -> tuple[Placement, tuple[str, ...]]:
    """Place with `fineserve.scheduler.placement` policy `policy` (rates capped at what each
    model can be served at, see `feasible_problem`); returns the placement and the models it
    left unplaced."""
    from fineserve.scheduler.placement.registry import place

    problem = policy_problem(models, num_gpus, gpu, cost_model, prompt_len, output_len)
    problem, _, dropped = feasible_problem(problem)
    result = place(problem, policy)
    return from_policy(result, num_gpus), (*dropped, *result.unplaced)
