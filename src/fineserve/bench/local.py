"""`fineserve bench local --scenario default --policy P[,P...] [--repeats R] [--json]`: the local
scheduler driving the real CPU engine.

Scenario `default`: three `tiny` models of different precision (Llama FP16, Qwen2 AWQ, Mistral
FP8 with an FP8 KV cache) made once with `fineserve make-model` into `--models-dir`, sharing one
KV Slab arena. Their step times are measured with `fineserve profile` right before the runs (on
the bench's clock; `--reuse-profile` takes the cached CSV next to the models instead) and that
table is the cost model the policies predict with. Capacity (requests/s the three sustain
together) is estimated from the table; Poisson arrivals at `--load` times capacity (scenario
`default`: 1.5; `overload`: 2.5; `tight`: 1.5 in a 0.5 MiB arena, so pages run out and
preemption and arbitration act) with power-law model popularity run for `--duration` seconds
per run, then drain.

Robustness on a shared machine: every policy runs `--repeats` times (default 3), interleaved
round by round (each round rotates the order: fcfs, saab, prism, slack; saab, prism, slack,
fcfs; ...), so a change of the machine's load hits every policy alike; the report gives per
policy the median of its runs and their spread (min, max), and `saab_over_fcfs` (ratio of the
median attainments) plus `saab_over_fcfs_paired` (median over rounds of that round's ratio).
`--clock cpu` (default) runs the engine on `bench.profile.ProcessClock`: time is this process's
CPU seconds (idle gaps jumped), so arrivals, TTFT and TPOT are relative to the work the engine
did, not to time slices other processes took; `--clock wall` is the plain wall clock. CPU
seconds still stretch when other processes share the machine (by up to ~1.8x on the shared
2-core VM), so each run reports the load it saw: `cpu_share` (CPU seconds / wall seconds) and
`speed_factor` (its engine steps' measured time over the table's prediction of the same
batches; 1.0 = as fast as the table says). The profile's short points ran 1.2-1.7x faster than
the same engine on the real mixed workload a minute later, which turned 1.5x load into ~2.5x
and every attainment into ~0; so before the rounds a pilot (`--pilot-s` seconds of the
workload under fcfs) measures that factor on thousands of real steps
(`pilot_speed_factor`), and the table used for capacity, SLOs and the policies' predictions
is scaled by it (`ScaledCost`). `--calibrate` measures the speed right before each
run instead (`calibrate`: one small batch per model) and scales that run's arrival times,
SLOs and the cost model the policy predicts with by it; on the shared VM that sample (~0.1 s)
proved noisier than the drift it corrects (factors 0.55..1.04 within a minute), so it is off
by default.

Reported per policy and model: TTFT/TPOT p50/p90/p99, SLO attainment, goodput, tokens/s,
preemptions, rejections, and pages leaked (must be 0, max over runs); plus
`sched_us_per_step`, the scheduler's own time per step with 256 running sequences over 4
models under the simulated executor.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Scenario:
    """Load (multiple of estimated capacity) and KV arena size. Invariant: both > 0."""

    load: float
    arena_mib: float


SCENARIOS = {
    "default": Scenario(1.5, 4.0),
    "overload": Scenario(2.5, 4.0),
    "tight": Scenario(1.5, 0.5),
}
MODELS = (
    ("llama-fp16", "llama", "fp16"),
    ("qwen-awq", "qwen2", "awq"),
    ("mistral-fp8", "mistral", "fp8"),
)
PROMPT_LEN = (16, 160)
OUTPUT_LEN = (4, 32)
DECODE_BATCH = 8  # concurrency assumed when estimating capacity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", default="default", choices=sorted(SCENARIOS))
    parser.add_argument("--policy", default="fcfs,saab", help="comma-separated policies")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--models-dir", type=Path, default=Path.home() / ".cache/fineserve/bench-local"
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of arrivals")
    parser.add_argument("--load", type=float, help="multiple of capacity (default: scenario's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arena-mib", type=float, help="KV arena MiB (default: scenario's)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per policy, interleaved")
    parser.add_argument("--clock", default="cpu", choices=("cpu", "wall"), help="engine clock")
    parser.add_argument(
        "--reuse-profile", action="store_true", help="use the cached CPU profile if present"
    )
    parser.add_argument(
        "--calibrate", action="store_true", help="scale each run by the speed measured before it"
    )
    parser.add_argument(
        "--pilot-s", type=float, default=2.0, help="seconds of pilot arrivals (0: no pilot)"
    )
    parser.add_argument("--sched-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def ensure_models(root: Path) -> dict[str, Path]:
    """Make the scenario's models (once) and return name -> folder."""
    from fineserve.execution import make_model

    return {
        name: make_model.ensure_model(root / name, arch, "tiny", precision)
        for name, arch, precision in MODELS
    }


def ensure_profile(
    root: Path,
    folders: dict[str, Path],
    clock: str = "cpu",
    reuse: bool = True,
    say: Callable[[str], None] | None = None,
) -> Path:
    """A CPU profile table of every model on `clock`, cached as `cpu-profile-<clock>.csv`;
    measured now unless `reuse` and the cache exists."""
    from fineserve.bench import profile
    from fineserve.costmodel.profile import write_profile

    path = root / f"cpu-profile-{clock}.csv"
    if reuse and path.is_file():
        return path
    rows: list[dict[str, Any]] = []
    for name, folder in folders.items():
        parser = argparse.ArgumentParser()
        profile.add_arguments(parser)
        args = parser.parse_args(
            [
                *("--model", str(folder), "--name", name, "--qformat", _q(name)),
                *("--batch-sizes", "1,4,16", "--input-lens", "32,128", "--output-len", "8"),
                *("--clock", clock),
            ]
        )
        rows += profile.profile_rows(args, say)
    write_profile(path, rows)
    return path


def plan_load(cost: Any, keys: dict[str, Any], load: float) -> dict[str, Any]:
    """Capacity, rates and SLOs from the cost table (see the module docstring)."""
    from fineserve.costmodel.base import BatchShape

    p_mean = sum(PROMPT_LEN) / 2
    o_mean = sum(OUTPUT_LEN) / 2
    shares = [1.0 / (i + 1) for i in range(len(keys))]
    shares = [s / sum(shares) for s in shares]
    per_request, slos = 0.0, {}
    decode_all = 0.0
    for (name, key), share in zip(keys.items(), shares, strict=True):
        prefill = cost.step_time(key, BatchShape(prefill=((int(p_mean), 0),)))
        ctx = int(p_mean + o_mean / 2)
        decode = cost.step_time(key, BatchShape(decode_context=(ctx,) * DECODE_BATCH))
        per_request += share * (prefill + o_mean * decode / DECODE_BATCH)
        decode_all += decode
        slos[name] = {"prefill_s": prefill, "decode_s": decode}
    for name in slos:
        slos[name]["ttft_slo_s"] = max(0.25, 10 * slos[name]["prefill_s"])
        slos[name]["tpot_slo_s"] = 3.0 * decode_all
    capacity = 1.0 / per_request
    return {"capacity_rps": capacity, "rate_rps": load * capacity, "shares": shares, "slos": slos}


def make_workload(
    names: list[str], shares: list[float], rate: float, duration: float, seed: int
) -> list[tuple[float, str, list[int], int]]:
    """(arrival offset, model, prompt, max_tokens) by Poisson arrivals, seeded."""
    rng = random.Random(seed)
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t > duration:
            return out
        model = rng.choices(names, weights=shares)[0]
        n = rng.randint(*PROMPT_LEN)
        out.append((t, model, [rng.randrange(3, 400) for _ in range(n)], rng.randint(*OUTPUT_LEN)))


class ScaledCost:
    """A cost model whose step times are `factor` x `inner`'s (the machine's speed now).
    Invariant: factor > 0, so monotonicity and zero for an empty batch carry over."""

    def __init__(self, inner: Any, factor: float) -> None:
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        self.inner = inner
        self.factor = factor

    def step_time(self, key: Any, batch: Any) -> float:
        return float(self.factor * self.inner.step_time(key, batch))

    def supports(self, key: Any) -> bool:
        return bool(self.inner.supports(key))


def calibrate(
    folders: dict[str, Path], cost: Any, keys: dict[str, Any], clock: str, repeats: int = 2
) -> float:
    """The engine's speed now relative to the table: median over models and `repeats` of
    (measured prefill of 4 x 64 tokens + 7 decode steps) / (the table's prediction of the
    same). > 1 means the machine runs slower than when it was profiled."""
    from fineserve.bench.profile import measure_point
    from fineserve.costmodel.base import BatchShape

    batch, prompt, out = 4, 64, 8
    ratios = []
    for _ in range(repeats):
        for name, folder in folders.items():
            pre, tpot, _ = measure_point(folder, batch, prompt, out, name, clock)
            key = keys[name]
            want = cost.step_time(key, BatchShape(prefill=((prompt, 0),) * batch))
            ctx = (prompt + out // 2,) * batch
            want += (out - 1) * cost.step_time(key, BatchShape(decode_context=ctx))
            ratios.append((pre + (out - 1) * tpot) / want)
    return float(statistics.median(ratios))


def scale_run(
    plan: dict[str, Any], workload: list[tuple[float, str, list[int], int]], factor: float
) -> tuple[dict[str, Any], list[tuple[float, str, list[int], int]]]:
    """`plan` and `workload` on a machine `factor` x slower: arrival offsets and SLOs times
    `factor`, rates divided by it; the requests themselves are unchanged."""
    slos = {
        n: {k: v * factor if k.endswith("_s") else v for k, v in slo.items()}
        for n, slo in plan["slos"].items()
    }
    scaled = dict(plan, slos=slos, capacity_rps=plan["capacity_rps"] / factor)
    scaled["rate_rps"] = plan["rate_rps"] / factor
    return scaled, [(t * factor, m, p, n) for t, m, p, n in workload]


def run_policy(
    policy: str,
    folders: dict[str, Path],
    cost: Any,
    plan: dict[str, Any],
    workload: list,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Drive one engine through the workload on the wall clock; return its summary."""
    from fineserve.engine.torch_executor import TorchModel, load_torch_engine
    from fineserve.execution.sampling import SamplingParams
    from fineserve.scheduler.local import SchedulerConfig
    from fineserve.workload.metrics import RequestRecord, measurement_window, summarize

    models = [
        TorchModel(
            n, f, plan["slos"][n]["ttft_slo_s"], plan["slos"][n]["tpot_slo_s"], qformat=_q(n)
        )
        for n, f in folders.items()
    ]
    from fineserve.bench.profile import make_clock

    engine, _ = load_torch_engine(
        models,
        int(args.arena_mib * (1 << 20)),
        cost,
        policy=policy,
        config=SchedulerConfig(token_budget=256, max_running=64),
        clock=make_clock(args.clock),
    )
    params = SamplingParams(temperature=0.0, ignore_eos=True)
    speed = engine.executor = _SpeedLog(engine.executor, cost)
    records: dict[str, RequestRecord] = {}
    clock, t0, nxt = engine.clock, engine.clock.now(), 0
    cpu0, wall0 = time.process_time(), time.monotonic()
    deadline = t0 + args.duration + 60.0
    while nxt < len(workload) or engine.has_work():
        now = clock.now()
        while nxt < len(workload) and t0 + workload[nxt][0] <= now:
            offset, model, prompt, max_tokens = workload[nxt]
            rid, nxt = f"q{nxt}", nxt + 1
            slo = plan["slos"][model]
            records[rid] = RequestRecord(
                model,
                t0 + offset,
                prompt_tokens=len(prompt),
                slo_ttft_s=slo["ttft_slo_s"],
                slo_tpot_s=slo["tpot_slo_s"],
            )
            engine.add_request(
                rid, model, prompt, max_tokens, sampling=params, arrival_s=t0 + offset
            )
        if now > deadline:
            for rid in list(engine.scheduler.seqs):
                engine.abort(rid)
        outputs = engine.step() if engine.has_unfinished() else engine.drain_outputs()
        _record(outputs, records, clock.now())
        if not engine.has_work() and nxt < len(workload):
            clock.sleep_until(t0 + workload[nxt][0])
    wall = time.monotonic() - wall0
    summary = summarize(records.values(), measurement_window(records.values()))
    alloc = engine.scheduler.pages.allocator
    alloc.check_integrity()
    stats = engine.scheduler.stats
    out = _shape(summary, stats, sum(alloc.used_pages(m) for m in alloc.model_names))
    out.update(wall_s=wall, cpu_share=(time.process_time() - cpu0) / wall if wall > 0 else None)
    out["speed_factor"] = speed.factor()
    return out


class _SpeedLog:
    """Executor wrapper summing each step's execution time and the cost model's prediction
    of the same batches (run one after another), for `speed_factor`."""

    def __init__(self, inner: Any, cost: Any) -> None:
        self.inner = inner
        self.cost = cost
        self.measured = 0.0
        self.predicted = 0.0

    def execute(self, plan: Any) -> Any:
        result = self.inner.execute(plan)
        self.measured += result.duration_s
        self.predicted += sum(self.cost.step_time(b.key, b.shape()) for b in plan.batches)
        return result

    def factor(self) -> float | None:
        """Measured over predicted execution seconds (None before any step)."""
        return self.measured / self.predicted if self.predicted > 0 else None


def _q(name: str) -> str:
    return name.split("-")[-1]


def _record(outputs: list, records: dict, now: float) -> None:
    for out in outputs:
        rec = records[out.request_id]
        if out.token_ids:
            if rec.first_token_s is None:
                rec.first_token_s = now
            rec.token_times_s.extend([now] * len(out.token_ids))
            rec.output_tokens += len(out.token_ids)
        if out.finished:
            rec.finish_s = now
            if out.finish_reason not in ("length", "stop"):
                rec.error = out.error or out.finish_reason


def _shape(summary: dict[str, Any], stats: Any, leaked: int) -> dict[str, Any]:
    def group(g: dict[str, Any]) -> dict[str, Any]:
        return {
            "requests": g["requests"],
            "completed": g["completed"],
            "slo_attainment": g["slo_attainment"],
            "goodput_rps": g["goodput_rps"],
            "tokens_per_s": g["tokens_per_s"],
            "ttft_s": {k: g["ttft_s"][k] for k in ("p50", "p90", "p99")},
            "tpot_s": {k: g["tpot_s"][k] for k in ("p50", "p90", "p99")},
        }

    models = {m: group(g) for m, g in summary["models"].items()}
    for m, g in models.items():
        g["preemptions"] = stats.preemptions_by_model.get(m, 0)
    out = group(summary)
    out.update(pages_leaked=leaked, preemptions=stats.preemptions, rejected=stats.rejected)
    out["models"] = models
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from fineserve.bench.profile import machine_conditions
    from fineserve.costmodel.base import InstanceKey
    from fineserve.costmodel.registry import make_cost_model

    torch.set_num_threads(args.threads)
    policies = _policies(args.policy)
    if args.repeats < 1:
        from fineserve.cli import CliError

        raise CliError("--repeats must be >= 1")
    say = _progress(args.quiet)
    scenario = SCENARIOS[args.scenario]
    if args.arena_mib is None:
        args.arena_mib = scenario.arena_mib
    args.models_dir.mkdir(parents=True, exist_ok=True)
    folders = ensure_models(args.models_dir)
    started = time.monotonic()
    path = ensure_profile(args.models_dir, folders, args.clock, args.reuse_profile, say)
    cost = make_cost_model(f"table:{path}")
    keys = {n: InstanceKey(n, _q(n)) for n in folders}
    load = args.load if args.load is not None else scenario.load
    pilot = pilot_factor(folders, cost, keys, load, args, say)
    cost = ScaledCost(cost, pilot) if pilot != 1.0 else cost
    plan = plan_load(cost, keys, load)
    workload = make_workload(
        list(folders), plan["shares"], plan["rate_rps"], args.duration, args.seed
    )
    load_before = os.getloadavg()

    def run_one(policy: str) -> dict[str, Any]:
        if not args.calibrate:
            return run_policy(policy, folders, cost, plan, workload, args)
        factor = calibrate(folders, cost, keys, args.clock)
        run_plan, run_load = scale_run(plan, workload, factor)
        res = run_policy(policy, folders, ScaledCost(cost, factor), run_plan, run_load, args)
        res["calibrated_factor"] = factor
        res["speed_factor"] /= factor  # measured against the scaled table: undo the scaling
        return res

    runs = run_rounds(policies, args.repeats, say, run_one)
    result = {
        "scenario": args.scenario,
        "load": load,
        "arena_mib": args.arena_mib,
        "capacity_rps": plan["capacity_rps"],
        "rate_rps": plan["rate_rps"],
        "requests": len(workload),
        "repeats": args.repeats,
        "clock": args.clock,
        "pilot_speed_factor": pilot,
        "policies": {p: aggregate(runs[p]) for p in policies},
    }
    result.update(ratios(result["policies"], runs))
    sched = _sched_us(policies, args.sched_steps)
    for p in policies:
        result["policies"][p]["sched_us_per_step"] = sched[p]
    result["sched_us_per_step"] = max(sched.values())
    result["slos"] = {
        n: {k: v for k, v in s.items() if k.endswith("slo_s")} for n, s in plan["slos"].items()
    }
    result["conditions"] = {
        **machine_conditions(load_before),
        "wall_s": time.monotonic() - started,
    }
    print(json.dumps(result, indent=1) if args.json else _table(result))
    return 0


def pilot_factor(
    folders: dict[str, Path],
    cost: Any,
    keys: dict[str, Any],
    load: float,
    args: argparse.Namespace,
    say: Callable[[str], None],
) -> float:
    """The engine's speed on this workload now relative to the profile: `--pilot-s` seconds of
    the scenario's arrivals under fcfs, its steps' measured over predicted execution time
    (`_SpeedLog`; thousands of real steps, unlike `calibrate`'s one small batch). 1.0 without a
    pilot. The rounds then plan capacity and SLOs, and predict, with the table times it."""
    if args.pilot_s <= 0:
        return 1.0
    plan = plan_load(cost, keys, load)
    work = make_workload(list(folders), plan["shares"], plan["rate_rps"], args.pilot_s, args.seed)
    res = run_policy("fcfs", folders, cost, plan, work, args)
    factor = res["speed_factor"] or 1.0
    say(f"pilot: {len(work)} requests, engine speed {factor:.2f}x the profile's step times")
    return float(factor)


def _policies(text: str) -> list[str]:
    from fineserve.scheduler.local import POLICIES

    policies = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        from fineserve.cli import CliError

        raise CliError(f"unknown policy {unknown}; choose from {sorted(POLICIES)}")
    return policies


def _progress(quiet: bool) -> Callable[[str], None]:
    def say(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    return say


def round_order(policies: list[str], round_index: int) -> list[str]:
    """Round `round_index`'s order: `policies` rotated left by `round_index` places, so over
    len(policies) rounds every policy runs once in every position."""
    k = round_index % len(policies)
    return policies[k:] + policies[:k]


def run_rounds(
    policies: list[str],
    repeats: int,
    say: Callable[[str], None],
    run_one: Callable[[str], dict[str, Any]],
) -> dict[str, list[dict[str, Any]]]:
    """`repeats` rounds of every policy (see `round_order`); each result gets its `round`.
    Returns the runs per policy, in round order."""
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
    for r in range(repeats):
        for p in round_order(policies, r):
            say(f"round {r + 1}/{repeats}: {p} ...")
            res = run_one(p)
            res["round"] = r
            runs[p].append(res)
            say(
                f"round {r + 1}/{repeats}: {p} attainment {_f(res['slo_attainment'])}, "
                f"preemptions {res['preemptions']}, {res['wall_s']:.0f} s wall, cpu share "
                f"{_f(res['cpu_share'], 2)}, speed factor {_f(res.get('speed_factor'), 2)}"
            )
    return runs


MEDIAN_KEYS = ("slo_attainment", "goodput_rps", "tokens_per_s")
COUNT_KEYS = ("preemptions", "rejected", "requests", "completed")


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One policy's runs as one entry: medians of `MEDIAN_KEYS` and the latency percentiles
    (overall and per model), `spread` {key: [min, max]}, counts as medians, `pages_leaked` as
    the max over runs (0 means no run leaked), and `runs` (each run's attainment, goodput,
    preemptions, cpu share). Invariant: min <= median <= max for every spread key."""
    out = _median_group(runs)
    out["spread"] = {k: [_min(r[k] for r in runs), _max(r[k] for r in runs)] for k in MEDIAN_KEYS}
    out["pages_leaked"] = max(r["pages_leaked"] for r in runs)
    out["runs"] = [
        {
            k: r.get(k)
            for k in ("round", *MEDIAN_KEYS, "preemptions", "rejected", "speed_factor", "cpu_share")
        }
        for r in runs
    ]
    names = list(runs[0]["models"])
    out["models"] = {m: _median_group([r["models"][m] for r in runs]) for m in names}
    for m in names:
        out["models"][m]["preemptions"] = _med([r["models"][m]["preemptions"] for r in runs])
    return out


def _median_group(groups: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: _med([g[k] for g in groups]) for k in MEDIAN_KEYS}
    for k in COUNT_KEYS:
        if k in groups[0]:
            out[k] = _med([g[k] for g in groups])
    for lat in ("ttft_s", "tpot_s"):
        out[lat] = {q: _med([g[lat][q] for g in groups]) for q in ("p50", "p90", "p99")}
    return out


def ratios(
    policies: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]]
) -> dict[str, float | None]:
    """`saab_over_fcfs` (median saab attainment / median fcfs attainment) and
    `saab_over_fcfs_paired` (median over rounds of saab / fcfs in that round); None when a
    policy is missing or fcfs attained 0."""
    if "saab" not in policies or "fcfs" not in policies:
        return {"saab_over_fcfs": None, "saab_over_fcfs_paired": None}
    paired = [
        s["slo_attainment"] / f["slo_attainment"]
        for s, f in zip(runs["saab"], runs["fcfs"], strict=True)
        if f["slo_attainment"]
    ]
    fcfs = policies["fcfs"]["slo_attainment"]
    return {
        "saab_over_fcfs": policies["saab"]["slo_attainment"] / fcfs if fcfs else None,
        "saab_over_fcfs_paired": statistics.median(paired) if paired else None,
    }


def _med(values: list[Any]) -> Any:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _min(values: Any) -> Any:
    vals = [v for v in values if v is not None]
    return min(vals) if vals else None


def _max(values: Any) -> Any:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def _sched_us(policies: list[str], steps: int) -> dict[str, float]:
    from fineserve.engine.overhead import measure_sched_us

    return {p: measure_sched_us(p, steps=steps).us_per_step for p in policies}


def _table(result: dict[str, Any]) -> str:
    lines = [
        f"scenario {result['scenario']}: {result['requests']} requests at "
        f"{result['rate_rps']:.2f} req/s ({result['load']}x estimated capacity "
        f"{result['capacity_rps']:.2f} req/s), arena {result['arena_mib']} MiB, "
        f"{result['repeats']} runs per policy (medians), {result['clock']} clock",
        f"{'policy':8} {'model':12} {'SLO att':>8} {'goodput':>8} {'tok/s':>7} "
        f"{'TTFT p50/p99':>14} {'TPOT p50/p99':>14} {'preempt':>7}",
    ]
    for policy, res in result["policies"].items():
        for model, g in [("all", res), *res["models"].items()]:
            lines.append(
                f"{policy:8} {model:12} {_f(g['slo_attainment']):>8} "
                f"{_f(g['goodput_rps']):>8} {_f(g['tokens_per_s'], 1):>7} "
                f"{_pair(g['ttft_s']):>14} {_pair(g['tpot_s']):>14} {g['preemptions']:>7}"
            )
        lo, hi = res["spread"]["slo_attainment"]
        lines.append(
            f"{policy:8} attainment range {_f(lo)}..{_f(hi)}, pages leaked "
            f"{res['pages_leaked']}, rejected {res['rejected']}, "
            f"sched {res['sched_us_per_step']:.0f} us/step"
        )
    lines.append(f"sched_us_per_step {result['sched_us_per_step']:.0f}")
    lines.append(
        f"saab/fcfs attainment {_f(result['saab_over_fcfs'], 2)} (paired by round "
        f"{_f(result['saab_over_fcfs_paired'], 2)})"
    )
    return "\n".join(lines)


def _f(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _pair(d: dict[str, float | None]) -> str:
    return f"{_f(d['p50'])}/{_f(d['p99'])}"
