"""`fineserve bench local --scenario default --policy P[,P...] [--json]`: the local scheduler
driving the real CPU engine.

Scenario `default`: three `tiny` models of different precision (Llama FP16, Qwen2 AWQ, Mistral
FP8 with an FP8 KV cache) made once with `fineserve make-model` into `--models-dir`, sharing one
KV Slab arena. Their step times are measured once with `fineserve profile` (cached CSV next to
the models) and that table is the cost model the policies predict with. Capacity (requests/s
the three sustain together) is estimated from the table; Poisson arrivals at `--load` times
capacity (1.5 by default; `overload` scenario: 2.5) with power-law model popularity run for
`--duration` seconds per policy on the wall clock, then drain. Reported per policy and model:
TTFT/TPOT p50/p90/p99, SLO attainment, goodput, tokens/s, preemptions, rejections, and pages
leaked (must be 0); plus `sched_us_per_step`, the scheduler's own time per step with 256
running sequences over 4 models under the simulated executor.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

SCENARIOS = {"default": 1.5, "overload": 2.5}
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
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals")
    parser.add_argument("--load", type=float, help="multiple of capacity (default: scenario's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arena-mib", type=int, default=4)
    parser.add_argument("--sched-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def ensure_models(root: Path) -> dict[str, Path]:
    """Make the scenario's models (once) and return name -> folder."""
    from fineserve.execution import make_model

    return {
        name: make_model.ensure_model(root / name, arch, "tiny", precision)
        for name, arch, precision in MODELS
    }


def ensure_profile(root: Path, folders: dict[str, Path]) -> Path:
    """A CPU profile table of every model (measured once, cached as `cpu-profile.csv`)."""
    from fineserve.bench import profile
    from fineserve.costmodel.profile import write_profile

    path = root / "cpu-profile.csv"
    if path.is_file():
        return path
    rows: list[dict[str, Any]] = []
    for name, folder in folders.items():
        parser = argparse.ArgumentParser()
        profile.add_arguments(parser)
        args = parser.parse_args(
            [
                *("--model", str(folder), "--name", name, "--qformat", _q(name)),
                *("--batch-sizes", "1,4,16", "--input-lens", "32,128", "--output-len", "8"),
            ]
        )
        rows += profile.profile_rows(args)
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
    engine, _ = load_torch_engine(
        models,
        args.arena_mib << 20,
        cost,
        policy=policy,
        config=SchedulerConfig(token_budget=256, max_running=64),
    )
    params = SamplingParams(temperature=0.0, ignore_eos=True)
    records: dict[str, RequestRecord] = {}
    clock, t0, nxt = engine.clock, engine.clock.now(), 0
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
    summary = summarize(records.values(), measurement_window(records.values()))
    alloc = engine.scheduler.pages.allocator
    alloc.check_integrity()
    stats = engine.scheduler.stats
    return _shape(summary, stats, sum(alloc.used_pages(m) for m in alloc.model_names))


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

    from fineserve.costmodel.base import InstanceKey
    from fineserve.costmodel.registry import make_cost_model
    from fineserve.engine.overhead import measure_sched_us
    from fineserve.scheduler.local import POLICIES

    torch.set_num_threads(args.threads)
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        from fineserve.cli import CliError

        raise CliError(f"unknown policy {unknown}; choose from {sorted(POLICIES)}")
    args.models_dir.mkdir(parents=True, exist_ok=True)
    folders = ensure_models(args.models_dir)
    cost = make_cost_model(f"table:{ensure_profile(args.models_dir, folders)}")
    keys = {n: InstanceKey(n, _q(n)) for n in folders}
    load = args.load if args.load is not None else SCENARIOS[args.scenario]
    plan = plan_load(cost, keys, load)
    workload = make_workload(
        list(folders), plan["shares"], plan["rate_rps"], args.duration, args.seed
    )
    result: dict[str, Any] = {
        "scenario": args.scenario,
        "load": load,
        "capacity_rps": plan["capacity_rps"],
        "rate_rps": plan["rate_rps"],
        "requests": len(workload),
        "policies": {},
    }
    sched = {}
    for policy in policies:
        result["policies"][policy] = run_policy(policy, folders, cost, plan, workload, args)
        sched[policy] = measure_sched_us(policy, steps=args.sched_steps).us_per_step
        result["policies"][policy]["sched_us_per_step"] = sched[policy]
    result["sched_us_per_step"] = max(sched.values())
    result["slos"] = {
        n: {k: v for k, v in s.items() if k.endswith("slo_s")} for n, s in plan["slos"].items()
    }
    print(json.dumps(result, indent=1) if args.json else _table(result))
    return 0


def _table(result: dict[str, Any]) -> str:
    lines = [
        f"scenario {result['scenario']}: {result['requests']} requests at "
        f"{result['rate_rps']:.2f} req/s ({result['load']}x estimated capacity "
        f"{result['capacity_rps']:.2f} req/s)",
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
        lines.append(
            f"{policy:8} pages leaked {res['pages_leaked']}, rejected {res['rejected']}, "
            f"sched {res['sched_us_per_step']:.0f} us/step"
        )
    lines.append(f"sched_us_per_step {result['sched_us_per_step']:.0f}")
    return "\n".join(lines)


def _f(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _pair(d: dict[str, float | None]) -> str:
    return f"{_f(d['p50'])}/{_f(d['p99'])}"
