"""`fineserve bench memory`: capacity and fragmentation of every KV memory scheme.

For each of several seeded popularity rankings of the scenario's models, each scheme's
*sustainable load* is found by bisection: the largest scale of the total request rate at which
at most 1% of requests ever wait for KV memory. At 1.2x the slab's sustainable load every
scheme is replayed once more to measure utilization under pressure, the stranded, edge and
tail shares of the arena, and the allocator's cost per page.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fineserve.bench.memory_replay import MemoryReplay, ReplayConfig, ReplayResult
from fineserve.bench.memory_scenarios import SCENARIOS, MemoryScenario
from fineserve.bench.memory_workload import TraceSource, build_requests, ranked_rates
from fineserve.cli import CliError
from fineserve.memory.allocator import ModelKV
from fineserve.memory.registry import make_allocator
from fineserve.workload.data import resolve_data_dir

SCHEME_ORDER = ("slab", "static", "uniform", "uniform_bytes", "paged_vmm")
WAIT_LIMIT = 0.01
PRESSURE_FACTOR = 1.2
METRICS = (
    "sustainable_load",
    "utilization_under_pressure",
    "stranded_frac",
    "edge_frac",
    "tail_frac",
    "alloc_free_us",
)


@dataclass(frozen=True)
class BenchSettings:
    duration_s: float = 1200.0
    rankings: int = 5
    bisect_steps: int = 9
    seed: int = 0


def replay(
    scenario: MemoryScenario,
    scheme: str,
    source: TraceSource,
    ranking: list[int],
    scale: float,
    settings: BenchSettings,
) -> ReplayResult:
    """Replay the scenario's traffic at `scale` through one scheme."""
    names = [m.name for m in scenario.models]
    rates = ranked_rates(scale * scenario.base_rate_rps, ranking)
    kv_steps = source.mean_kv_token_steps()
    longest = max(p + o for p, o in source.lengths) if scheme == "static" else 0
    models = [
        ModelKV(
            m.name,
            m.fmt,
            reserve_bytes=longest * m.fmt.bytes_per_token,
            demand_weight=max(r, 1e-9) * kv_steps * m.fmt.bytes_per_token,
        )
        for m, r in zip(scenario.models, rates, strict=True)
    ]
    alloc = make_allocator(scheme, scenario.arena_bytes, models)
    requests = build_requests(
        source, names, rates, settings.duration_s, scenario.step_s, settings.seed
    )
    return MemoryReplay(alloc, requests, ReplayConfig()).run()


def bisect_load(waited_at: Callable[[float], float], steps: int) -> float:
    """Largest scale with waited fraction <= WAIT_LIMIT (assumed monotonic in scale)."""
    lo, hi = 0.0, 0.25
    while waited_at(hi) <= WAIT_LIMIT:
        lo, hi = hi, hi * 2
        if hi > 64:
            return hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        if waited_at(mid) <= WAIT_LIMIT:
            lo = mid
        else:
            hi = mid
    return lo


def pressure_figures(result: ReplayResult) -> dict[str, float]:
    per_page = result.alloc_seconds / max(result.alloc_pages, 1) * 1e6
    return {
        "utilization_under_pressure": result.pressure_mean("live"),
        "stranded_frac": result.pressure_mean("stranded"),
        "edge_frac": result.pressure_mean("edge"),
        "tail_frac": result.pressure_mean("tail"),
        "alloc_free_us": per_page,
    }


def evaluate_ranking(
    scenario: MemoryScenario,
    source: TraceSource,
    ranking: list[int],
    settings: BenchSettings,
    progress: Callable[[str], None],
) -> dict[str, dict[str, float]]:
    """Every metric for every scheme under one popularity ranking."""
    figures: dict[str, dict[str, float]] = {}
    for scheme in SCHEME_ORDER:

        def waited_at(scale: float, scheme: str = scheme) -> float:
            return replay(scenario, scheme, source, ranking, scale, settings).waited_frac

        figures[scheme] = {"sustainable_load": bisect_load(waited_at, settings.bisect_steps)}
        progress(f"ranking {ranking}: {scheme} sustains {figures[scheme]['sustainable_load']:.3f}")
    pressure_scale = PRESSURE_FACTOR * figures["slab"]["sustainable_load"]
    for scheme in SCHEME_ORDER:
        result = replay(scenario, scheme, source, ranking, pressure_scale, settings)
        figures[scheme].update(pressure_figures(result))
    return figures


def slab_lead(figures: dict[str, dict[str, float]]) -> float:
    best_other = max(v["sustainable_load"] for k, v in figures.items() if k != "slab")
    return figures["slab"]["sustainable_load"] / max(best_other, 1e-12)


def run_benchmark(
    scenario: MemoryScenario,
    source: TraceSource,
    settings: BenchSettings,
    progress: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """The whole benchmark; returns the JSON document described in the issue."""
    rng = random.Random(settings.seed)
    per_ranking = []
    for _ in range(settings.rankings):
        ranking = list(range(len(scenario.models)))
        rng.shuffle(ranking)
        per_ranking.append(evaluate_ranking(scenario, source, ranking, settings, progress))
    means = {
        s: {k: sum(r[s][k] for r in per_ranking) / len(per_ranking) for k in METRICS}
        for s in SCHEME_ORDER
    }
    worst = min(per_ranking, key=slab_lead)
    return {
        "scenario": scenario.name,
        "arena_bytes": scenario.arena_bytes,
        "workload": source.origin,
        "schemes": means,
        "worst": worst,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", default="h100-mixed", help=f"one of {sorted(SCENARIOS)}")
    parser.add_argument("--json", action="store_true", help="print the JSON document only")
    parser.add_argument("--data-dir", default=None, help="trace folder (default ../shared/data)")
    parser.add_argument("--synthetic", action="store_true", help="ignore any data folder")
    parser.add_argument("--rankings", type=int, default=5, help="popularity rankings to average")
    parser.add_argument("--duration", type=float, default=1200.0, help="seconds of traffic")
    parser.add_argument("--quick", action="store_true", help="2 rankings of 300 s (a demo)")
    parser.add_argument("--seed", type=int, default=0)


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    if args.quick:
        return BenchSettings(duration_s=300.0, rankings=2, bisect_steps=7, seed=args.seed)
    if args.rankings < 1 or args.duration <= 0:
        raise CliError("--rankings must be >= 1 and --duration > 0")
    return BenchSettings(duration_s=args.duration, rankings=args.rankings, seed=args.seed)


def print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"KV memory schemes, {doc['scenario']} (means over rankings)")
    table.add_column("scheme")
    for header in ("load", "util@pressure", "stranded", "edge", "tail", "µs/page"):
        table.add_column(header, justify="right")
    for scheme, figures in doc["schemes"].items():
        cells = [
            f"{figures[k]:.3f}" if k != "alloc_free_us" else f"{figures[k]:.2f}" for k in METRICS
        ]
        table.add_row(scheme, *cells)
    console = Console(width=110)
    console.print(table)
    console.print(f"arena: {doc['arena_bytes'] / 2**30:.2f} GiB; workload: {doc['workload']}")
    slab = doc["schemes"]["slab"]["sustainable_load"]
    for other in ("static", "uniform", "uniform_bytes", "paged_vmm"):
        ratio = slab / max(doc["schemes"][other]["sustainable_load"], 1e-12)
        console.print(f"slab sustainable load / {other}: {ratio:.2f}x")


def run(args: argparse.Namespace) -> int:
    scenario = SCENARIOS.get(args.scenario)
    if scenario is None:
        raise CliError(f"unknown scenario {args.scenario!r}; choose one of {sorted(SCENARIOS)}")
    try:
        data_dir = None if args.synthetic else resolve_data_dir(args.data_dir)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    settings = settings_from_args(args)
    source = TraceSource.load(data_dir, settings.seed)

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)  # stdout carries only the table or the JSON

    doc = run_benchmark(scenario, source, settings, progress)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_table(doc)
    return 0
