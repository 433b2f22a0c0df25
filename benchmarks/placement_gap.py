"""Greedy FineServe placement vs the exact MILP, and planning time at scale.

Random small instances (one node of 4 H100s, 3-6 models drawn from Llama-3.1-8B in four
precisions and Qwen3-32B, power-law rates with a random total): the gap is
``(goodput_milp - goodput_fineserve) / goodput_milp`` in *predicted* goodput (the same predictor
scores both; a negative gap means greedy scored higher than the MILP's linear objective led to).
Then the time of ``place(problem, "fineserve")`` for 64 GPUs (8 nodes x 8) and 40 models.

    python benchmarks/placement_gap.py [--instances 30] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from fineserve.costmodel import make_cost_model
from fineserve.costmodel.base import CostModel
from fineserve.costmodel.roofline import KNOWN_MODELS
from fineserve.scheduler.placement import (
    ClusterSpec,
    InfeasibleError,
    ModelDemand,
    PlacementProblem,
    kv_formats_for,
    place,
    weight_bytes_for,
)
from fineserve.workload.arrivals import power_law_shares

CATALOGUE = [
    ("llama-3.1-8b", "fp16"),
    ("llama-3.1-8b", "awq"),
    ("llama-3.1-8b", "fp8"),
    ("llama-3.1-8b", "qoq"),
    ("qwen-3-32b", "fp16"),
]


def _demand(
    name: str, arch: str, q: str, rate: float, rng: np.random.Generator, tps: tuple[int, ...]
) -> ModelDemand:
    spec = KNOWN_MODELS[arch]
    return ModelDemand(
        name, arch, q, weight_bytes_for(spec, q), kv_formats_for(spec, q, tps), rate,
        ttft_slo_s=float(rng.choice([0.5, 1.0, 2.0])), tpot_slo_s=float(rng.choice([0.05, 0.1])),
        prompt_len=int(rng.choice([256, 512, 1024])), output_len=int(rng.choice([128, 256])),
        tp_options=tps,
    )  # fmt: skip


def random_problem(
    rng: np.random.Generator,
    cost: CostModel,
    nodes: int = 1,
    gpus: int = 4,
    n_models: int | None = None,
) -> PlacementProblem:
    n = n_models or int(rng.integers(3, 7))
    picks = [CATALOGUE[int(rng.integers(len(CATALOGUE)))] for _ in range(n)]
    total = float(rng.uniform(5, 25)) * nodes * gpus / 4
    shares = power_law_shares(n, float(rng.uniform(0.5, 1.5)))
    models = tuple(
        _demand(f"m{k}-{a}-{q}", a, q, total * s, rng, (1, 2, 4) if gpus >= 4 else (1, 2))
        for k, ((a, q), s) in enumerate(zip(picks, shares, strict=True))
    )
    return PlacementProblem(models, ClusterSpec(nodes, gpus), cost)


def gaps(instances: int, seed: int, cost: CostModel) -> list[float]:
    rng = np.random.default_rng(seed)
    out: list[float] = []
    while len(out) < instances:
        problem = random_problem(rng, cost)
        try:
            greedy = place(problem, "fineserve").predicted.goodput
            best = place(problem, "milp").predicted.goodput
        except InfeasibleError:
            continue
        if best > 0:
            out.append((best - greedy) / best)
    return out


def plan_seconds(cost: CostModel, seed: int) -> float:
    rng = np.random.default_rng(seed + 1)
    problem = random_problem(rng, cost, nodes=8, gpus=8, n_models=40)
    start = time.perf_counter()
    place(problem, "fineserve")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    cost = make_cost_model("h100")
    g = gaps(args.instances, args.seed, cost)
    result = {
        "gap_median": round(float(np.median(g)), 4),
        "gap_p95": round(float(np.percentile(g, 95)), 4),
        "gap_mean": round(float(np.mean(g)), 4),
        "instances": len(g),
        "plan_seconds_64gpu_40models": round(plan_seconds(cost, args.seed), 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:30s} {v}")
    return result


if __name__ == "__main__":
    main()
