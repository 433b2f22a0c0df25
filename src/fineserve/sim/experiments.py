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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from fineserve.costmodel.base import CostModel, InterferenceModel
from fineserve.costmodel.registry import make_cost_model
from fineserve.costmodel.table import load_fitted_interference
from fineserve.engine.clock import perf_counter
from fineserve.sim.catalog import GpuSpec, SimModel, paper_models
from fineserve.sim.loop import ClusterSim, SimRequest
from fineserve.sim.placement import Placement, fill_unplaced, fixed_placement, policy_placement
from fineserve.sim.schemes import SCHEMES, SchemeSpec, get_scheme
from fineserve.sim.verify import PLANNING_SEED_OFFSET, Trial, Verified, choose_placement
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


def candidate_placements(
    spec: SchemeSpec,
    models: Sequence[SimModel],
    num_gpus: int,
    gpu: GpuSpec,
    cost: CostModel,
    mean_lengths: tuple[int, int],
) -> dict[str, Placement]:
    """`spec`'s candidate placements by name, in trial order: each of its
    `placement_candidates` policies for the models as served, then the first (the scheme's
    own) planned with the SLOs scaled by each of its `placement_slo_margins`
    (`"{policy}@{margin:g}"`)."""
    plan = partial(placement_for, spec, num_gpus=num_gpus, gpu=gpu, cost=cost,
                   mean_lengths=mean_lengths)  # fmt: skip
    out = {policy: plan(models, policy=policy) for policy in spec.placement_candidates}
    own = spec.placement_candidates[0]
    for margin in spec.placement_slo_margins:
        out[f"{own}@{margin:g}"] = plan([slo_scaled(m, margin) for m in models], policy=own)
    return out


def slo_scaled(model: SimModel, factor: float) -> SimModel:
    """`model` with its TTFT and TPOT SLOs (those it has) times `factor`."""
    ttft, tpot = model.ttft_slo_s, model.tpot_slo_s
    return model.with_slo(
        None if ttft is None else ttft * factor, None if tpot is None else tpot * factor
    )


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
) -> Verified:
    """`spec`'s placement verified by simulation (`sim.verify`): each of its
    `placement_candidates` run by the scheme on a planning workload of its own seed."""
    reqs = poisson_requests(models, plan.lengths, spec.verify_s, plan.seed + PLANNING_SEED_OFFSET)
    candidates = candidate_placements(spec, models, num_gpus, gpu, plan.cost, plan.mean_lengths)

    def simulate(placement: Placement) -> Trial:
        res = run_scheme(spec, models, reqs, plan.cost, plan.interference, num_gpus,
                         spec.verify_s + plan.drain_s, gpu, placement)  # fmt: skip
        return Trial(float(res.summary["slo_attainment"] or 0.0), res.sim_s, res.wall_s)

    return choose_placement(candidates, simulate)


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
) -> RunResult:
    """Simulate scheme `spec` on `requests`; metrics over [0, horizon]."""
    gpu = gpu or GpuSpec()
    placement = placement or fixed_placement(models, num_gpus, gpu)
    sim = ClusterSim(models, placement, spec, cost, interference, gpu)
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


def run_paper(
    cfg: PaperConfig,
    data_dir: Path | None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The `paper` experiment's JSON document (see the module docstring)."""
    cost = make_cost_model(cfg.cost_model)
    interference = load_fitted_interference()
    lengths = sharegpt_lengths(data_dir)
    ref = mean_prompt(lengths)
    mean_out = round(sum(o for _, o in lengths) / max(len(lengths), 1))
    plan = Planning(cost, interference, lengths, (ref, mean_out), cfg.seed, cfg.drain_s)
    points: list[dict[str, Any]] = []
    sim_total = wall_total = 0.0
    detail: list[dict[str, Any]] = []
    for rate in cfg.rates:
        for scale in cfg.slo_scales:
            models = paper_models_at(cfg, rate, scale, cost, ref)
            reqs = poisson_requests(models, lengths, cfg.duration_s, cfg.seed)
            schemes: dict[str, dict[str, float]] = {}
            for name in cfg.schemes:
                spec = get_scheme(name)
                chosen: dict[str, Any] = {}
                if spec.placement_candidates:
                    v = verified_placement(spec, models, cfg.num_gpus, GpuSpec(), plan)
                    placement = v.placement
                    sim_total += v.sim_s
                    wall_total += v.wall_s
                    chosen = {"placement": v.chosen, "planning_attainment": dict(v.scores),
                              "planning_wall_s": v.wall_s}  # fmt: skip
                else:
                    placement = placement_for(
                        spec, models, cfg.num_gpus, GpuSpec(), cost, (ref, mean_out)
                    )
                res = run_scheme(spec, models, reqs, cost, interference, cfg.num_gpus,
                                 cfg.duration_s + cfg.drain_s, placement=placement)  # fmt: skip
                sim_total += res.sim_s
                wall_total += res.wall_s
                s = res.summary
                schemes[name] = {
                    "slo_attainment": float(s["slo_attainment"] or 0.0),
                    "tokens_per_s": float(s["tokens_per_s"]),
                    "goodput_rps": float(s["goodput_rps"]),
                }
                detail.append({"rate": rate, "slo_scale": scale, "scheme": name,
                               "requests": s["requests"], "sim_s": res.sim_s,
                               "wall_s": res.wall_s, **res.stats, **chosen})  # fmt: skip
                if progress is not None:
                    progress(
                        f"rate {rate:g} scale {scale:g} {name}: attainment "
                        f"{schemes[name]['slo_attainment']:.3f}, {s['tokens_per_s']:.0f} tok/s "
                        f"({res.sim_s:.0f} s simulated in {res.wall_s:.1f} s)"
                    )
            points.append({"rate": rate, "slo_scale": scale, "schemes": schemes})
    return {
        "experiment": "paper",
        "points": points,
        "sim_speedup": sim_total / max(wall_total, 1e-9),
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
