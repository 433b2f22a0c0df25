"""Experiments: the paper's cluster comparison (`paper`) and rate drift (`drift`, see drift.py).

`paper`: the catalogue of `catalog.paper_models` on 16 H100s, power-law rates (alpha as MuxServe),
Poisson arrivals, ShareGPT lengths, TTFT SLO = scale x solo TTFT of the mean ShareGPT prompt.
For every (total rate, SLO scale) point every scheme runs the same requests on its own
placement. Metrics come from `workload.metrics.summarize` over the arrival window plus a drain
period; `sim_speedup` = simulated seconds of all runs / wall seconds spent simulating them,
planning simulations of verified placements (`sim.verify`) included.
The only module of `sim/` that reads a timer (`engine.clock.perf_counter`) — to report speed,
never to drive the simulation.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from functools import cache, partial
from pathlib import Path
from typing import Any

from fineserve.costmodel.base import CostModel, InterferenceModel
from fineserve.costmodel.registry import make_cost_model
from fineserve.costmodel.table import load_fitted_interference
from fineserve.engine.clock import perf_counter
from fineserve.sim.catalog import GpuSpec, SimModel, paper_models, slo_scaled
from fineserve.sim.collector import rare_collections
from fineserve.sim.loop import ClusterSim, SimRequest
from fineserve.sim.placement import Placement, fill_unplaced, fixed_placement, policy_placement
from fineserve.sim.schemes import SCHEMES, SchemeSpec, get_scheme
from fineserve.sim.verify import (
    PLANNING_SEED_OFFSET,
    Trial,
    Verified,
    choose_placement,
    refine_choice,
)
from fineserve.sim.workload import (
    MUXSERVE_ALPHA,
    assign_rates,
    mean_prompt,
    poisson_requests,
    sharegpt_lengths,
    with_slos,
)
from fineserve.workload.metrics import summarize

SCHEME_ORDER = ("static", "muxserve", "prism", "fineserve", "fineserve_plus")
METRICS = ("slo_attainment", "tokens_per_s", "goodput_rps")


@dataclass(frozen=True)
class PaperConfig:
    """The `paper` sweep. `rates`: total req/s over all models; `slo_scales`: TTFT SLO
    multiples of solo TTFT; `duration_s`: arrival window; `drain_s`: extra time to finish."""

    rates: tuple[float, ...] = (20.0, 40.0, 60.0, 80.0, 100.0)
    slo_scales: tuple[float, ...] = (5.0, 10.0)
    duration_s: float = 120.0
    drain_s: float = 60.0
    num_gpus: int = 16
    copies_8b: int = 5
    alpha: float = MUXSERVE_ALPHA
    seed: int = 0
    schemes: tuple[str, ...] = SCHEME_ORDER
    cost_model: str = "h100"

    @staticmethod
    def quick() -> PaperConfig:
        return PaperConfig(rates=(30.0, 90.0), slo_scales=(5.0,), duration_s=40.0, drain_s=30.0)


@dataclass
class RunResult:
    """One scheme at one point: the metrics summary and how long it took."""

    summary: dict[str, Any]
    sim_s: float
    wall_s: float
    stats: dict[str, float] = field(default_factory=dict)


def placement_for(
    spec: SchemeSpec,
    models: Sequence[SimModel],
    num_gpus: int,
    gpu: GpuSpec,
    cost: CostModel,
    mean_lengths: tuple[int, int],
    policy: str | None = None,
) -> Placement:
    """The scheme's placement from `fineserve.scheduler.placement` (its policy, or `policy`;
    each model at its catalogue TP), with the models it leaves out placed best effort on
    leftover memory (`fill_unplaced`, the same rule for every scheme); the built-in
    `fixed_placement` if that policy raises."""
    try:
        placement, _ = policy_placement(
            models, num_gpus, gpu, policy or spec.placement_policy, cost, *mean_lengths
        )
    except ValueError:
        return fixed_placement(models, num_gpus, gpu, spec.placement_score)
    return fill_unplaced(placement, models, gpu)[0]


@dataclass(frozen=True)
class Candidate:
    """A placement to try, and the margin its engines serve the SLOs at (1.0: as given)."""

    placement: Placement
    slo_margin: float = 1.0


@dataclass(frozen=True)
class PlanSpec:
    """How a candidate is made: placement `policy` for every model's SLOs times `margin`;
    `served`: its engines serve those scaled SLOs too (else the SLOs as given)."""

    policy: str
    margin: float = 1.0
    served: bool = False

    @property
    def name(self) -> str:
        """`policy`, `policy@margin` or `policy@margin:served`."""
        if self.margin == 1.0 and not self.served:
            return self.policy
        return f"{self.policy}@{self.margin:g}" + (":served" if self.served else "")


def candidate_plans(spec: SchemeSpec) -> list[PlanSpec]:
    """`spec`'s candidates in trial order: each of its `placement_candidates` policies for
    the models as given; then the first (the scheme's own) planned with the SLOs scaled by
    each of its `placement_slo_margins`, and by each of its `served_slo_margins` with engines
    serving the scaled SLOs too."""
    own = spec.own_policy
    return [
        *(PlanSpec(policy) for policy in spec.placement_candidates),
        *(PlanSpec(own, margin) for margin in spec.placement_slo_margins),
        *(PlanSpec(own, margin, served=True) for margin in spec.served_slo_margins),
    ]


class Planner:
    """Builds the candidates of `candidate_plans` for one problem, each (policy, margin)
    placement once."""

    def __init__(
        self,
        spec: SchemeSpec,
        models: Sequence[SimModel],
        num_gpus: int,
        gpu: GpuSpec,
        cost: CostModel,
        mean_lengths: tuple[int, int],
    ) -> None:
        self._plan = partial(placement_for, spec, num_gpus=num_gpus, gpu=gpu, cost=cost,
                             mean_lengths=mean_lengths)  # fmt: skip
        self._models = models
        self._placed: dict[tuple[str, float], Placement] = {}

    def candidate(self, plan: PlanSpec) -> Candidate:
        key = (plan.policy, plan.margin)
        if key not in self._placed:
            models = self._models
            if plan.margin != 1.0:
                models = [slo_scaled(m, plan.margin) for m in models]
            self._placed[key] = self._plan(models, policy=plan.policy)
        return Candidate(self._placed[key], plan.margin if plan.served else 1.0)


def candidate_placements(
    spec: SchemeSpec,
    models: Sequence[SimModel],
    num_gpus: int,
    gpu: GpuSpec,
    cost: CostModel,
    mean_lengths: tuple[int, int],
) -> dict[str, Candidate]:
    """`spec`'s candidates (`candidate_plans`) by name, in trial order."""
    planner = Planner(spec, models, num_gpus, gpu, cost, mean_lengths)
    return {plan.name: planner.candidate(plan) for plan in candidate_plans(spec)}


@dataclass(frozen=True)
class Planning:
    """What a planning simulation knows: the cost and interference models, the length
    distribution, the mean lengths the policies plan with, and the evaluation's seed."""

    cost: CostModel
    interference: InterferenceModel
    lengths: Sequence[tuple[int, int]]
    mean_lengths: tuple[int, int]
    seed: int
    drain_s: float = 30.0


def verified_placement(
    spec: SchemeSpec, models: Sequence[SimModel], num_gpus: int, gpu: GpuSpec, plan: Planning
) -> Verified[Candidate]:
    """`spec`'s placement verified by simulation (`sim.verify`): each of its candidates run by
    the scheme on a planning workload of its own seed, the best kept; then, with a
    `refine_policy`, the winner (when the scheme's own policy made it) re-planned by that
    policy at the same margins is run too when its placement differs, and kept if better."""
    reqs = poisson_requests(models, plan.lengths, spec.verify_s, plan.seed + PLANNING_SEED_OFFSET)
    planner = Planner(spec, models, num_gpus, gpu, plan.cost, plan.mean_lengths)
    plans = {p.name: p for p in candidate_plans(spec)}

    def simulate(candidate: Candidate) -> Trial:
        res = run_scheme(spec, models, reqs, plan.cost, plan.interference, num_gpus,
                         spec.verify_s + plan.drain_s, gpu, candidate.placement,
                         candidate.slo_margin)  # fmt: skip
        return Trial(float(res.summary["slo_attainment"] or 0.0), res.sim_s, res.wall_s)

    chosen = choose_placement({n: planner.candidate(p) for n, p in plans.items()}, simulate)
    won = plans[chosen.chosen]
    if not spec.refine_policy or won.policy != spec.own_policy:
        return chosen
    refined = replace(won, policy=spec.refine_policy)
    candidate = planner.candidate(refined)
    if same_instances(candidate.placement, chosen.candidate.placement):
        return chosen
    return refine_choice(chosen, {refined.name: candidate}, simulate)


def same_instances(a: Placement, b: Placement) -> bool:
    """The same instances on the same GPUs, whatever their order."""
    return sorted((i.model, i.gpus) for i in a.instances) == sorted(
        (i.model, i.gpus) for i in b.instances
    )


def run_scheme(
    spec: SchemeSpec,
    models: Sequence[SimModel],
    requests: Sequence[SimRequest],
    cost: CostModel,
    interference: InterferenceModel,
    num_gpus: int,
    horizon_s: float,
    gpu: GpuSpec | None = None,
    placement: Placement | None = None,
    slo_margin: float = 1.0,
) -> RunResult:
    """Simulate scheme `spec` on `requests`, its engines serving the SLOs times `slo_margin`;
    metrics (at the models' own SLOs) over [0, horizon]."""
    gpu = gpu or GpuSpec()
    placement = placement or fixed_placement(models, num_gpus, gpu)
    sim = ClusterSim(models, placement, spec, cost, interference, gpu, slo_margin=slo_margin)
    t0 = perf_counter()
    book = sim.run(requests, horizon_s=horizon_s)
    wall = perf_counter() - t0
    records = book.values()
    window = horizon_s if records else 1.0
    end = max((r.finish_s for r in records if r.finish_s is not None), default=0.0)
    window = max(min(horizon_s, max(end, max(r.arrival_s for r in records))), 1e-9)
    stats = {
        "steps": float(sim.stats.steps),
        "events": float(sim.stats.events),
        "preemptions": float(sim.stats.preemptions),
        "gpu_busy_s": sim.stats.gpu_busy_s,
    }
    return RunResult(summarize(records, window), sim.stats.sim_end_s, wall, stats)


def paper_models_at(
    cfg: PaperConfig, rate: float, scale: float, cost: CostModel, ref: int
) -> list[SimModel]:
    models = assign_rates(paper_models(cfg.copies_8b), rate, cfg.alpha, cfg.seed)
    return with_slos(models, cost, scale, ref)


@dataclass(frozen=True)
class PaperRun:
    """One (rate, SLO scale, scheme) cell of the sweep: the unit a worker process runs."""

    rate: float
    scale: float
    scheme: str


def sweep_runs(cfg: PaperConfig) -> list[PaperRun]:
    """Every cell of `cfg`'s sweep, in the order the document lists them."""
    return [PaperRun(r, s, n) for r in cfg.rates for s in cfg.slo_scales for n in cfg.schemes]


def longest_first(runs: Sequence[PaperRun]) -> list[PaperRun]:
    """`runs` in the order a worker pool should start them: higher rates first (their runs are
    the longest), and at one rate the schemes that also run planning simulations first, so
    the last runs to finish are short ones."""

    def cost(run: PaperRun) -> tuple[float, bool]:
        return (run.rate, bool(get_scheme(run.scheme).placement_candidates))

    return sorted(runs, key=cost, reverse=True)


@cache
def _sweep_setting(cost_model: str, data_dir: Path | None, seed: int, drain_s: float) -> Planning:
    """The cost and interference models and length distribution of a sweep, read once per
    process."""
    lengths = sharegpt_lengths(data_dir)
    mean_out = round(sum(o for _, o in lengths) / max(len(lengths), 1))
    return Planning(make_cost_model(cost_model), load_fitted_interference(), lengths,
                    (mean_prompt(lengths), mean_out), seed, drain_s)  # fmt: skip


def run_paper_cell(cfg: PaperConfig, data_dir: Path | None, run: PaperRun) -> dict[str, Any]:
    """One cell of the `paper` sweep: the scheme's placement (simulation-verified when it has
    candidates) and its run over the point's requests. The result is the `runs` row of the
    document (metrics included); it depends only on its arguments. The whole cell (requests,
    placements, engines, runs, metrics) runs with the collector's run thresholds
    (`sim.collector`)."""
    with rare_collections():
        return _paper_cell(cfg, data_dir, run)


def _paper_cell(cfg: PaperConfig, data_dir: Path | None, run: PaperRun) -> dict[str, Any]:
    plan = _sweep_setting(cfg.cost_model, data_dir, cfg.seed, cfg.drain_s)
    models = paper_models_at(cfg, run.rate, run.scale, plan.cost, plan.mean_lengths[0])
    reqs = poisson_requests(models, plan.lengths, cfg.duration_s, cfg.seed)
    spec = get_scheme(run.scheme)
    chosen: dict[str, Any] = {}
    sim_s = wall_s = 0.0
    if spec.placement_candidates:
        v = verified_placement(spec, models, cfg.num_gpus, GpuSpec(), plan)
        candidate = v.candidate
        sim_s, wall_s = v.sim_s, v.wall_s
        chosen = {"placement": v.chosen, "planning_attainment": dict(v.scores),
                  "planning_wall_s": v.wall_s}  # fmt: skip
    else:
        candidate = Candidate(
            placement_for(spec, models, cfg.num_gpus, GpuSpec(), plan.cost, plan.mean_lengths)
        )
    res = run_scheme(spec, models, reqs, plan.cost, plan.interference, cfg.num_gpus,
                     cfg.duration_s + cfg.drain_s, placement=candidate.placement,
                     slo_margin=candidate.slo_margin)  # fmt: skip
    s = res.summary
    metrics = {k: float(s[k] or 0.0) for k in METRICS}
    totals = {"cell_sim_s": sim_s + res.sim_s, "cell_wall_s": wall_s + res.wall_s}
    return {"rate": run.rate, "slo_scale": run.scale, "scheme": run.scheme, **metrics,
            "requests": s["requests"], "sim_s": res.sim_s, "wall_s": res.wall_s, **res.stats,
            **chosen, **totals}  # fmt: skip


def _cells(
    cfg: PaperConfig, data_dir: Path | None, runs: Sequence[PaperRun], jobs: int
) -> Iterator[dict[str, Any]]:
    """`runs` as they finish: in this process when `jobs` is 1, else on a pool of `jobs`
    worker processes fed longest first."""
    if jobs <= 1 or len(runs) <= 1:
        yield from (run_paper_cell(cfg, data_dir, run) for run in runs)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(runs)), mp_context=context) as pool:
        futures = [pool.submit(run_paper_cell, cfg, data_dir, r) for r in longest_first(runs)]
        yield from (f.result() for f in as_completed(futures))


def run_paper(
    cfg: PaperConfig,
    data_dir: Path | None,
    progress: Callable[[str], None] | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """The `paper` experiment's JSON document (see the module docstring). `jobs` worker
    processes run the cells; every figure but the wall times is the same for any `jobs`."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    t0 = perf_counter()
    runs = sweep_runs(cfg)
    rows: dict[tuple[float, float, str], dict[str, Any]] = {}
    for row in _cells(cfg, data_dir, runs, jobs):
        rows[row["rate"], row["slo_scale"], row["scheme"]] = row
        if progress is not None:
            progress(
                f"[{len(rows)}/{len(runs)}] "
                f"rate {row['rate']:g} scale {row['slo_scale']:g} {row['scheme']}: attainment "
                f"{row['slo_attainment']:.3f}, {row['tokens_per_s']:.0f} tok/s "
                f"({row['sim_s']:.0f} s simulated in {row['wall_s']:.1f} s)"
            )
    elapsed = perf_counter() - t0
    ordered = [rows[r.rate, r.scale, r.scheme] for r in runs]
    points = [
        {"rate": rate, "slo_scale": scale,
         "schemes": {r["scheme"]: {k: r[k] for k in METRICS} for r in ordered
                     if (r["rate"], r["slo_scale"]) == (rate, scale)}}
        for rate in cfg.rates for scale in cfg.slo_scales
    ]  # fmt: skip
    sim_total = sum(r.pop("cell_sim_s") for r in ordered)
    wall_total = sum(r.pop("cell_wall_s") for r in ordered)
    detail = [{k: v for k, v in r.items() if k not in METRICS} for r in ordered]
    plan = _sweep_setting(cfg.cost_model, data_dir, cfg.seed, cfg.drain_s)
    ref = plan.mean_lengths[0]
    return {
        "experiment": "paper",
        "points": points,
        "sim_speedup": sim_total / max(elapsed, 1e-9),
        "sim_speedup_per_process": sim_total / max(wall_total, 1e-9),
        "jobs": jobs,
        "elapsed_s": elapsed,
        "runs": detail,
        "config": {
            "num_gpus": cfg.num_gpus,
            "alpha": cfg.alpha,
            "duration_s": cfg.duration_s,
            "models": len(paper_models(cfg.copies_8b)),
            "ref_prompt_tokens": ref,
            "cost_model": cfg.cost_model,
            "schemes": list(SCHEMES),
        },
    }
