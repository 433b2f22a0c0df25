"""The `drift` experiment: per-model rates that change over an hour, with and without online
re-placement (`scheduler.placement.replan`).

Rates: the paper catalogue; model i's rate at minute k is `total x share_i(k) x shape(k)`, where
`shape` is the per-minute arrival count of the Azure 2023 conversation trace (normalised to mean
1; flat when the data folder is missing) and `share_i` moves linearly from the power-law
popularity order to its reverse over the run (the hot models cool down, cold ones heat up).
Arrivals are a piecewise-constant Poisson process per minute (seeded). Two FineServe runs see
the same requests: `fixed` keeps the initial placement; `replan` asks `replan()` every
`replan_every_s` with the rates measured over the last window and applies its proposal (new
engines start at once; engines that left drain their requests; unchanged ones keep running).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fineserve.costmodel.registry import make_cost_model
from fineserve.costmodel.table import load_fitted_interference
from fineserve.engine.clock import perf_counter
from fineserve.sim.catalog import GpuSpec, SimModel, paper_models
from fineserve.sim.loop import ClusterSim, SimRequest
from fineserve.sim.placement import Placement
from fineserve.sim.schemes import get_scheme
from fineserve.sim.workload import MUXSERVE_ALPHA, mean_prompt, sharegpt_lengths, with_slos
from fineserve.workload.arrivals import power_law_shares
from fineserve.workload.metrics import summarize
from fineserve.workload.traces import load_azure


@dataclass(frozen=True)
class DriftConfig:
    duration_s: float = 3600.0
    replan_every_s: float = 600.0
    total_rate: float = 50.0
    slo_scale: float = 5.0
    num_gpus: int = 16
    copies_8b: int = 5
    seed: int = 0
    scheme: str = "fineserve"
    drain_s: float = 120.0

    @staticmethod
    def quick() -> DriftConfig:
        return DriftConfig(duration_s=600.0, replan_every_s=150.0)


def minute_shape(data_dir: Path | None, minutes: int) -> np.ndarray:
    """Per-minute arrival counts of the Azure conversation trace, tiled, mean 1."""
    counts = np.ones(minutes)
    if data_dir is not None:
        try:
            times = np.array([r.arrival_s for r in load_azure(data_dir, "conv")])
            per_min = np.bincount((times // 60).astype(int))
            counts = np.resize(per_min.astype(float), minutes)
        except (FileNotFoundError, OSError, ValueError):
            pass
    return counts / max(counts.mean(), 1e-9)


def drift_rates(n: int, minutes: int, total: float, shape: np.ndarray) -> np.ndarray:
    """[model, minute] rates (see the module docstring)."""
    start = np.array(power_law_shares(n, MUXSERVE_ALPHA))
    end = start[::-1]
    frac = np.linspace(0.0, 1.0, minutes)[None, :]
    shares = start[:, None] * (1 - frac) + end[:, None] * frac
    return total * shares * shape[None, :minutes]


def drift_requests(
    models: list[SimModel], rates: np.ndarray, lengths: list[tuple[int, int]], seed: int
) -> list[SimRequest]:
    rng = np.random.default_rng(seed)
    out: list[SimRequest] = []
    for i, m in enumerate(models):
        k = 0
        for minute, rate in enumerate(rates[i]):
            count = rng.poisson(rate * 60.0)
            for t in np.sort(rng.uniform(minute * 60.0, (minute + 1) * 60.0, count)):
                p, o = lengths[int(rng.integers(len(lengths)))]
                p = max(1, min(p, m.mtype.max_model_len - 2))
                o = max(1, min(o, m.mtype.max_model_len - 1 - p))
                out.append(SimRequest(f"{m.name}-{k}", m.name, float(t), p, o))
                k += 1
    out.sort(key=lambda r: (r.arrival_s, r.request_id))
    return out


def run_drift(
    cfg: DriftConfig, data_dir: Path | None, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    from fineserve.sim.placement import feasible_problem, policy_problem

    say = progress or (lambda _: None)
    cost = make_cost_model("h100")
    lengths = sharegpt_lengths(data_dir)
    ref, out_mean = mean_prompt(lengths), round(float(np.mean([o for _, o in lengths])))
    minutes = int(np.ceil(cfg.duration_s / 60))
    catalog = paper_models(cfg.copies_8b)
    rates = drift_rates(len(catalog), minutes, cfg.total_rate, minute_shape(data_dir, minutes))
    models = [SimModel(n, t, float(rates[i, :10].mean())) for i, (n, t) in enumerate(catalog)]
    models = with_slos(models, cost, cfg.slo_scale, ref)
    reqs = drift_requests(models, rates, lengths, cfg.seed)
    problem = policy_problem(models, cfg.num_gpus, GpuSpec(), cost, ref, out_mean)
    from fineserve.scheduler.placement.registry import place

    # a model no option serves at its rate is planned at its feasible rate (the excess misses);
    # one no option serves at any rate is left out (its requests fail): see `feasible_problem`
    problem, caps, dropped = feasible_problem(problem)
    for name, r in caps.items():
        say(f"drift: {name} planned at {r:.2f} req/s (its initial rate is infeasible)")
    initial = place(problem, "fineserve")
    runs: dict[str, Any] = {}
    for mode in ("fixed", "replan"):
        t0 = perf_counter()
        sim = ClusterSim(models, _ours(initial, cfg.num_gpus), get_scheme(cfg.scheme), cost,
                         load_fitted_interference())  # fmt: skip
        state: dict[str, Any] = {"current": initial, "moves": 0, "capped": 0, "errors": 0}
        replan_fn = _replanner(sim, problem, state, cfg) if mode == "replan" else None
        times = np.arange(cfg.replan_every_s, cfg.duration_s, cfg.replan_every_s)
        book = sim.run(reqs, cfg.duration_s + cfg.drain_s, list(times), replan_fn)
        s = summarize(book.values(), cfg.duration_s + cfg.drain_s)
        runs[mode] = {"slo_attainment": s["slo_attainment"], "tokens_per_s": s["tokens_per_s"],
                      "goodput_rps": s["goodput_rps"], "moves": state["moves"],
                      "capped_replans": state["capped"], "replan_errors": state["errors"],
                      "unplaced": sorted(set(sim.unplaced) | set(dropped)),
                      "wall_s": perf_counter() - t0}  # fmt: skip
        say(f"drift {mode}: attainment {s['slo_attainment']:.3f}, moves {state['moves']}")
    return {"experiment": "drift", "duration_s": cfg.duration_s, "requests": len(reqs),
            "replan_every_s": cfg.replan_every_s, "runs": runs, "points": [],
            "capped_rates": caps, "dropped": list(dropped)}  # fmt: skip


def _ours(placement: Any, num_gpus: int) -> Placement:
    from fineserve.sim.placement import from_policy

    return from_policy(placement, num_gpus)


def _replanner(sim: ClusterSim, problem: Any, state: dict[str, Any], cfg: DriftConfig) -> Any:
    from fineserve.scheduler.placement.replan import replan
    from fineserve.sim.placement import capped_problem

    def fn(now: float) -> Placement | None:
        window = cfg.replan_every_s
        counts: dict[str, int] = {}
        for rec in sim.book.records.values():
            if rec.arrival_s >= now - window:
                counts[rec.model] = counts.get(rec.model, 0) + 1
        names = {m.name for m in problem.models}
        measured = {m: counts.get(m, 0) / window for m in sim.models if m in names}
        drifted, caps = capped_problem(problem.with_rates(measured))
        state["capped"] += bool(caps)
        try:
            proposal = replan(problem, state["current"], {m.name: m.rate for m in drifted.models})
        except ValueError:  # InfeasibleError and friends: keep the placement that runs
            state["errors"] += 1
            return None
        if not proposal.moves:
            return None
        state["current"] = proposal.after
        state["moves"] += len(proposal.moves)
        return _ours(proposal.after, cfg.num_gpus)

    return fn


def format_drift(doc: dict[str, Any]) -> str:
    lines = [f"drift: {doc['requests']} requests over {doc['duration_s']:.0f} s"]
    for mode, r in doc["runs"].items():
        lines.append(
            f"{mode:<8} attainment {r['slo_attainment']:.3f}  tokens/s {r['tokens_per_s']:.0f}  "
            f"goodput {r['goodput_rps']:.2f}/s  moves {r['moves']}  capped replans "
            f"{r.get('capped_replans', 0)}  unplaced {r.get('unplaced', [])}  "
            f"({r['wall_s']:.0f} s wall)"
        )
    return "\n".join(lines)
