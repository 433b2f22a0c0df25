"""`fineserve sim --validate`: the simulator against the real CPU engine on the same workload.

1. Make a small random-weight Llama folder (`fineserve make-model`), measure its CPU cost table
   with the code of `fineserve profile` (`bench.profile.profile_rows`: a grid of the batch sizes
   and prompt lengths the workload reaches, repeats interleaved, medians kept, in the arena of
   the real run) right before the real run, fit it (`TableCostModel.from_csv`).
2. Serve a seeded Poisson workload with the real engine (torch executor, one torch thread, KV
   Slab, SAAB, scheduling with the table of step 1), requests injected at their arrival times,
   records noted as outputs stream out. The engine is warmed up first (its first steps pay
   one-off costs no table holds). Every step's batch shape and time is kept.
3. Meanwhile, the same grid is profiled again, one point at a time between the run's steps at
   regular intervals of engine time, with the run's clock paused (`PausableClock`): those
   points see the machine under the same load as the run's own steps (on a shared machine
   the load moves within seconds, and a table measured before or after drifts by 10-40%).
   `profile.drift_during_over_before` says how far the speed moved from the first table.
4. Simulate the same requests on one GPU group with the in-run table (the first table's row
   for any point the run ended too soon to measure; rows are the means of their runs; fitted
   with the CPU options of `costmodel.fit`: decode piecewise in the batch size, decode
   attention padded to the longest context, prefill attention padded as the engine's prefill
   groups compute it, weights from the fit; mixed steps' extra m0 + m1 x decodes from the
   probes' mixed steps, which are formed as the engine forms them), the same arena, policy,
   SLO and token budget. The simulated steps carry the step-time noise measured from the probes'
   timed steps (`costmodel.noise`: each probe's steps against the table fitted without its
   point), seeded; the simulation runs `SIM_SEEDS` times and its figures are averaged.
5. Report both summaries, the relative error of mean/p90 TTFT and TPOT and of attainment, and
   `step_fidelity`: the in-run table's prediction of each real step over its measured time,
   per step kind (how much of the error is the table's rather than the simulation's).

Workload and SLO are set from the measured table, so they mean the same on a fast or slow
machine: the arrival rate is `load` x the capacity the table predicts (`capacity_rps`), and the
TTFT SLO is `slo_scale` x the solo TTFT of the mean prompt (as in the paper's experiments), not
a point picked on the TTFT distribution. `attainment_by_scale` also compares both runs at other
scales (measured against the same records, the scheduler having run with `slo_scale`).

Clock (`clock`, default `"cpu"`, or the environment's `FINESERVE_VALIDATE_CLOCK`): profile and
real run both time the engine on `bench.profile.ProcessClock` (this process's CPU seconds, idle
gaps jumped) or both on the wall clock (`"wall"`). On a CPU shared with other processes the
wall clock measures their load too, which changes between the profile and the run; the CPU
clock measures the engine's own work, i.e. what a dedicated core would show. `conditions`
says how loaded the machine was (load averages, the share of a core the run got).

This module drives the real torch engine and reads real clocks (`engine.clock.WallClock` /
`bench.profile.ProcessClock`), so it lives in `bench/`, not in the torch-free, clock-free
`sim/`; `sim/cli.py` imports it only for `--validate`, and torch only when a run starts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fineserve.bench.profile import machine_conditions
from fineserve.sim.loop import SimRequest
from fineserve.workload.metrics import RequestRecord, measurement_window, summarize

NAME = "small-llama"
TOKEN_BUDGET = 512
PROMPT_LEN = (16, 200)  # inclusive-exclusive, as numpy's integers()
OUTPUT_LEN = (4, 40)
DECODE_BATCH = 8  # concurrency assumed when estimating capacity from the table
KEYS = (("ttft_s", "mean"), ("ttft_s", "p90"), ("tpot_s", "mean"), ("tpot_s", "p90"))
SCALES = (2.0, 3.0, 5.0, 10.0)
CLOCK_ENV = "FINESERVE_VALIDATE_CLOCK"
MIXED_STEPS = 4  # mixed steps timed per profile point (one is a single, noisy step)
KV_PAGE = 16  # tokens per KV page of the engines here (`load_torch_engine`'s default)
SIM_SEEDS = 20  # simulations with step-time noise, each seed its own draw; summaries averaged
ONEDNN_CACHE_DEFAULT = 1024  # oneDNN's primitive cache capacity unless the environment says
GEMM_SHAPES = 4  # GEMM shapes a step's token count builds: q/o, k/v, gate/up, down (Llama)
KERNEL_PROBES = 24  # token counts timed twice for the kernel-cache miss cost


@dataclass(frozen=True)
class Settings:
    """One validation's sizes. Invariant: every field > 0; batch sizes / lengths are CSV ints."""

    requests: int
    load: float  # arrival rate / capacity predicted by the table
    slo_scale: float  # TTFT SLO = slo_scale x solo TTFT of the mean prompt
    batch_sizes: str
    input_lens: str
    output_len: int
    repeats: int


QUICK = Settings(300, 0.6, 5.0, "1,2,4,8,16", "16,64,128,256", 8, 2)
FULL = Settings(1000, 0.6, 5.0, "1,2,4,8,12,16", "16,32,64,128,192,256", 12, 3)


def _make_model(root: Path) -> Path:
    from fineserve.execution import make_model

    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the report / JSON
        return make_model.write_model(root / NAME, "llama", "small")


def _profile(
    folder: Path, settings: Settings, clock: str, arena_tokens: int, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Profile rows of `folder` on `clock` in an arena of `arena_tokens` tokens."""
    from fineserve.bench.profile import profile_rows

    args = argparse.Namespace(
        model=folder, name=NAME, qformat="fp32", batch_sizes=settings.batch_sizes,
        input_lens=settings.input_lens, output_len=settings.output_len,
        repeats=settings.repeats, clock=clock, arena_tokens=arena_tokens,
        mixed_steps=MIXED_STEPS,
    )  # fmt: skip
    return profile_rows(args, say)


def _table(rows: list[dict[str, Any]], path: Path) -> Any:
    """`TableCostModel` fitted to `rows` (written to `path` first, as `fineserve profile`),
    with the CPU fit options: decode piecewise in the batch size, weights from the fit, decode
    attention padded to the batch's longest context, prefill attention padded as the CPU
    engine's batched prefill groups compute it (`costmodel.fit`)."""
    from fineserve.costmodel.profile import write_profile
    from fineserve.costmodel.table import TableCostModel

    write_profile(path, rows)
    return TableCostModel.from_csv(
        path, piecewise_decode=True, reweight=True, padded_decode=True, padded_prefill=KV_PAGE
    )


def workload(n: int, rate: float, seed: int) -> list[SimRequest]:
    """Seeded Poisson arrivals with prompts of 16..199 and outputs of 4..39 tokens."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, size=n))
    prompts = rng.integers(*PROMPT_LEN, size=n)
    outputs = rng.integers(*OUTPUT_LEN, size=n)
    return [
        SimRequest(f"v{i}", NAME, float(t), int(p), int(o))
        for i, (t, p, o) in enumerate(zip(times, prompts, outputs, strict=True))
    ]


def capacity_rps(cost: Any, key: Any) -> float:
    """Requests/s one instance sustains by the table: a mean prompt's prefill plus its mean
    output decoded in batches of `DECODE_BATCH` at the mean context. Invariant: > 0."""
    from fineserve.costmodel.base import BatchShape

    prompt = sum(PROMPT_LEN) / 2
    output = sum(OUTPUT_LEN) / 2
    prefill = cost.step_time(key, BatchShape(prefill=((int(prompt), 0),)))
    ctx = int(prompt + output / 2)
    decode = cost.step_time(key, BatchShape(decode_context=(ctx,) * DECODE_BATCH))
    return 1.0 / (prefill + output * decode / DECODE_BATCH)


def _prompt(i: int, n: int) -> list[int]:
    return [(7 * k + i) % 2000 + 3 for k in range(n)]


def _warm_up(engine: Any, params: Any) -> None:
    """A few requests through the engine before the clock starts (first calls pay one-off
    costs: allocation, oneDNN primitives, lazy initialisation)."""
    for i, n in enumerate((PROMPT_LEN[0], 64, PROMPT_LEN[1] - 1, 128)):
        engine.add_request(f"warm{i}", NAME, _prompt(i, n), 4, sampling=params)
    engine.run_until_idle()


class PausableClock:
    """A clock (`engine.clock.Clock`) that can be stopped: `now()` = the inner clock's time
    minus every `pause()` interval. Invariant: `now()` never decreases; time spent inside
    `pause()` (profiling between two engine steps) never shows on it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.paused_s = 0.0

    def now(self) -> float:
        return float(self.inner.now()) - self.paused_s

    def advance(self, seconds: float) -> None:
        self.inner.advance(seconds)

    def sleep_until(self, t: float) -> None:
        self.inner.sleep_until(t + self.paused_s)

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        start = self.inner.now()
        try:
            yield
        finally:
            self.paused_s += max(0.0, float(self.inner.now()) - start)


class _ShapeLog:
    """Executor wrapper noting the batch shapes of the step it runs (for `step_fidelity`)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last: tuple[Any, ...] = ()

    def execute(self, plan: Any) -> Any:
        self.last = tuple(b.shape() for b in plan.batches)
        return self.inner.execute(plan)


def _real(
    folder: Path,
    reqs: list[SimRequest],
    arena: int,
    slo: float,
    cost: Any,
    clock_kind: str,
    probe: Callable[[], bool] | None = None,
    probe_every_s: float = 0.0,
) -> tuple[list[RequestRecord], dict[str, float], list[tuple[Any, float]]]:
    """Records of the real engine on `reqs`, the run's clock/CPU/wall seconds, and every
    non-empty step as (batch shape, seconds on the clock: plan + execution + update).

    `probe` (if given) is called between steps every `probe_every_s` of engine time with the
    engine's clock paused (it profiles one point; it returns False when it has no more to do):
    the profile is then taken under the same machine load as the run."""
    from fineserve.bench.profile import make_clock
    from fineserve.engine.torch_executor import TorchModel, load_torch_engine
    from fineserve.execution.sampling import SamplingParams
    from fineserve.scheduler.local import SchedulerConfig
    from fineserve.sim.records import RecordBook

    clock = PausableClock(make_clock(clock_kind))
    engine, _ = load_torch_engine(
        [TorchModel(NAME, folder, ttft_slo_s=slo)], arena, cost, policy="saab",
        config=SchedulerConfig(token_budget=TOKEN_BUDGET), clock=clock,
    )  # fmt: skip
    params = SamplingParams(temperature=0.0, ignore_eos=True)
    _warm_up(engine, params)
    log = engine.executor = _ShapeLog(engine.executor)
    book, steps = RecordBook(), []
    pending = list(reversed(reqs))  # pop() from the end = next arrival
    cpu0, wall0 = time.process_time(), time.monotonic()
    t0 = clock.now()
    next_probe = probe_every_s if probe is not None else float("inf")
    while pending or engine.has_work():
        now = clock.now() - t0
        while pending and pending[-1].arrival_s <= now:
            r = pending.pop()
            book.arrive(r.request_id, NAME, r.arrival_s, r.prompt_tokens, slo, None)
            prompt = _prompt(len(pending), r.prompt_tokens)
            engine.add_request(
                r.request_id, NAME, prompt, r.output_tokens, sampling=params,
                arrival_s=r.arrival_s + t0,
            )  # fmt: skip
        if not engine.has_work():
            clock.sleep_until(t0 + pending[-1].arrival_s)
            continue
        start = clock.now()
        outputs = engine.step()
        end = clock.now()
        if log.last:
            steps.append((log.last[0], end - start))
            log.last = ()
        book.apply(outputs, end - t0)
        if probe is not None and end - t0 >= next_probe:
            with clock.pause():
                more = probe()
            next_probe = next_probe + probe_every_s if more else float("inf")
    stats = {
        "clock_s": clock.now() - t0,
        "cpu_s": time.process_time() - cpu0,
        "wall_s": time.monotonic() - wall0,
        "paused_s": clock.paused_s,
    }
    return book.values(), stats, steps


def step_fidelity(cost: Any, key: Any, steps: Sequence[tuple[Any, float]]) -> dict[str, Any]:
    """Per step kind (prefill, decode, mixed): steps, and the table's prediction over the
    measured step as the median ratio and the ratio of sums (1.0 = exact). Separates the cost
    table's error from the simulation's (queueing, batching) error."""
    kinds: dict[str, list[tuple[float, float]]] = {}
    for shape, seconds in steps:
        if seconds <= 0:
            continue
        kind = "mixed" if shape.prefill and shape.decode_context else (
            "prefill" if shape.prefill else "decode")  # fmt: skip
        kinds.setdefault(kind, []).append((cost.step_time(key, shape), seconds))
    return {
        k: {
            "steps": len(v),
            "pred_over_real_median": float(np.median([p / r for p, r in v])),
            "pred_over_real_sum": sum(p for p, _ in v) / sum(r for _, r in v),
        }
        for k, v in sorted(kinds.items())
    }


def _replayed(cost: Any, kernel: Any) -> Any:
    """`cost` plus the kernel-cache misses (`costmodel.kernel_cache.CachedCostModel`) of the
    steps it is asked about, in that order: for `step_fidelity` over the real run's steps, the
    prediction of each real step with the cache state the run's earlier steps left."""
    from fineserve.costmodel.kernel_cache import CachedCostModel, KernelCacheProcess

    return cost if kernel.off else CachedCostModel(cost, KernelCacheProcess(kernel))


def _simulated(
    reqs: list[SimRequest],
    kv: Any,
    arena: int,
    slo: float,
    cost: Any,
    noise: Any = None,
    seed: int = 0,
    process: Any = None,
    kernel: Any = None,
) -> list:
    """The simulator's records of `reqs`; with `noise` (a `costmodel.noise.StepNoise`) every
    executed step's time is multiplied by its factor, drawn from `seed` (`noisy_coster`; or
    from `process`, a `NoiseProcess`-like object, when given); with `kernel` (a
    `costmodel.kernel_cache.KernelCache`) executed steps also pay its misses."""
    from fineserve.sim.catalog import GpuSpec, ModelType, SimModel
    from fineserve.sim.loop import ClusterSim
    from fineserve.sim.placement import PlacedInstance, Placement
    from fineserve.sim.schemes import SchemeSpec

    mtype = ModelType(NAME, "fp32", 1, kv, 1, max_model_len=4096)
    model = SimModel(NAME, mtype, 1.0, ttft_slo_s=slo)
    scheme = SchemeSpec("validate", "slab", "saab", False, "mme", token_budget=TOKEN_BUDGET)
    placement = Placement((PlacedInstance(NAME, (0,)),), 1)
    gpu = GpuSpec(memory_bytes=arena + 1, reserve_bytes=0, name="cpu")
    sim = ClusterSim([model], placement, scheme, cost, cost.interference, gpu, True)
    noisy = process is not None or (noise is not None and not noise.off)
    if noisy or (kernel is not None and not kernel.off):
        sim.coster = noisy_coster(cost, noise, seed, process, kernel)
    return sim.run(reqs).values()


def noisy_coster(cost: Any, noise: Any, seed: int, process: Any = None, kernel: Any = None) -> Any:
    """A `sim.stepper.BatchCoster` costing steps with `cost` plus `noise` (a `StepNoise`,
    drawn from `seed`; or the given `costmodel.noise.NoiseProcess`-like `process`) and, with
    `kernel` (a `KernelCache`), the kernel-cache misses of the steps
    (`costmodel.kernel_cache.CachedCostModel`, under the noise): every path of the coster
    (single steps, multi-step plans, plan chains) reads that model. The scheduler's
    predictions stay the table's, as in the real run; only how long the simulated steps take
    changes. (A mixed step's prefill fraction asks the model twice more, which also moves the
    noise's clock: the slow part runs a little faster there.)"""
    from fineserve.costmodel.kernel_cache import CachedCostModel, KernelCacheProcess
    from fineserve.costmodel.noise import NoiseProcess, NoisyCostModel, StepNoise
    from fineserve.sim.stepper import BatchCoster

    inner = cost
    if kernel is not None and not kernel.off:
        inner = CachedCostModel(cost, KernelCacheProcess(kernel))
    return BatchCoster(NoisyCostModel(inner, process or NoiseProcess(noise or StepNoise(), seed)))


def _rel(sim: float | None, real: float | None) -> float | None:
    if sim is None or real is None or real == 0:
        return None
    return abs(sim - real) / abs(real)


def attainment_at(records: Sequence[RequestRecord], slo_s: float) -> float:
    """Share of `records` that completed with TTFT <= `slo_s` (0.0 for no records)."""
    if not records:
        return 0.0
    met = sum(1 for r in records if r.ttft_s is not None and r.ttft_s <= slo_s)
    return met / len(records)


def compare(
    real: list[RequestRecord],
    simmed: list[RequestRecord] | Sequence[list[RequestRecord]],
    solo_s: float | None = None,
) -> dict[str, Any]:
    """Summaries of both runs and the relative errors (sim vs real); with `solo_s` (the solo
    TTFT the SLO is scaled from) also both attainments at each of `SCALES`. `simmed` may be
    several simulations of the same requests (one list of records each, e.g. noise seeds):
    the sim's figures are then their means."""
    sims: list[list[RequestRecord]] = (
        [list(simmed)]  # type: ignore[arg-type]
        if simmed and isinstance(simmed[0], RequestRecord)
        else [list(s) for s in simmed]  # type: ignore[union-attr]
    )
    window = max(measurement_window(x) for x in (real, *sims))
    a = _brief(summarize(real, window))
    briefs = [_brief(summarize(x, window)) for x in sims]
    b = {k: _mean([br[k] for br in briefs]) for k in a}
    errors = {f"{m}_{s}": _rel(b[f"{m}_{s}"], a[f"{m}_{s}"]) for m, s in KEYS}
    errors["slo_attainment"] = _rel(b["slo_attainment"], a["slo_attainment"])
    doc: dict[str, Any] = {"real": a, "sim": b, "relative_error": errors}
    if len(sims) > 1:
        doc["sim_runs"] = len(sims)
        # how much one noisy simulation's figures vary (sd / mean over the runs): the real
        # run is one such draw of the machine's noise, so this is the scale of error to expect
        doc["sim_spread"] = {
            k: statistics.pstdev(vals) / statistics.fmean(vals)
            for k in (f"{m}_{s}" for m, s in KEYS)
            if len(vals := [br[k] for br in briefs if br[k] is not None]) > 1
            and statistics.fmean(vals) > 0
        }
    if solo_s is not None:
        doc["attainment_by_scale"] = {
            f"{k:g}": {
                "real": attainment_at(real, k * solo_s),
                "sim": statistics.fmean(attainment_at(x, k * solo_s) for x in sims),
            }
            for k in SCALES
        }
    return doc


def _mean(values: list[Any]) -> Any:
    """Mean of the values that are not None (None if all are)."""
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def _brief(s: dict[str, Any]) -> dict[str, Any]:
    out = {f"{m}_{k}": s[m][k] for m, k in KEYS}
    out.update(slo_attainment=s["slo_attainment"], requests=s["requests"])
    return out


def _clock_kind(clock: str | None) -> str:
    kind = clock or os.environ.get(CLOCK_ENV) or "cpu"
    if kind not in ("cpu", "wall"):
        raise ValueError(f"clock must be 'cpu' or 'wall', got {kind!r}")
    return kind


def run_validation(
    quick: bool = False,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    clock: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The validation document (see the module docstring)."""
    say = progress or (lambda _: None)
    kind = _clock_kind(clock)
    cfg = settings or (QUICK if quick else FULL)
    # one torch thread for profile and real run alike (env before torch loads, then torch)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fineserve-validate-") as tmp:
        doc = _validate_in(Path(tmp), cfg, kind, seed, say)
    doc["conditions"] = {"clock": kind, **machine_conditions(load_before)}
    doc["conditions"].update(doc.pop("_run"))
    return doc


def _validate_in(
    root: Path, cfg: Settings, kind: str, seed: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """Profile, real run, profile again, simulate (see the module docstring): the document
    plus a `_run` entry of timings for `conditions`."""
    from fineserve.bench.profile import _arena_bytes, drift
    from fineserve.costmodel.noise import estimate_step_noise
    from fineserve.execution.instance import load_instance
    from fineserve.sim.catalog import ModelType
    from fineserve.sim.workload import solo_ttft

    folder = _make_model(root)
    arena_tokens = 16 * 240
    arena = _arena_bytes(folder, arena_tokens)
    start = time.monotonic()
    before = _profile(folder, cfg, kind, arena_tokens, say)
    cost = _table(before, root / "cpu-profile-before.csv")
    kv = load_instance(folder, None, None, 16, 0).kv_format
    probe = ModelType(NAME, "fp32", 1, kv, 1, max_model_len=4096)
    key = probe.key
    capacity = capacity_rps(cost, key)
    reqs = workload(cfg.requests, cfg.load * capacity, seed)
    solo = solo_ttft(cost, probe, sum(PROMPT_LEN) // 2, TOKEN_BUDGET)
    slo = cfg.slo_scale * solo
    say(
        f"serving {len(reqs)} requests at {cfg.load * capacity:.1f} req/s ({cfg.load}x the "
        f"table's capacity) on the real engine, TTFT SLO {slo * 1e3:.0f} ms, {kind} clock ..."
    )
    kernel = measure_kernel_cache(folder, cfg, kind, arena_tokens)
    profile_s = time.monotonic() - start
    during = _InRunProfile(folder, cfg, kind, arena_tokens)
    every = len(reqs) / (cfg.load * capacity) / (during.total + 1)
    real, run, steps = _real(folder, reqs, arena, slo, cost, kind, during.next, every)
    say(
        f"real run: {run['clock_s']:.1f} s engine time, {run['wall_s']:.1f} s wall (of it "
        f"{during.done} profile points measured in between, clock paused); simulating"
    )
    in_run = during.rows(before)
    table = _table(in_run, root / "cpu-profile.csv")
    # the noise is measured out of sample: each probe's steps against the table fitted
    # without its point (its own fit would hide the table's error on shapes it did not see)
    held_out = {
        point: _table([r for r in in_run if (r["batch_size"], r["input_len"]) != point],
                      root / "cpu-profile-held-out.csv")
        for point in during.runs
    }  # fmt: skip
    noise = estimate_step_noise(during.timed_steps(held_out.__getitem__, key))
    sims = [
        _simulated(reqs, kv, arena, slo, table, noise, seed + k, kernel=kernel)
        for k in range(SIM_SEEDS)
    ]
    doc = compare(real, sims, solo)
    errs = [v for v in doc["relative_error"].values() if v is not None]
    doc.update(
        model=NAME, requests=len(reqs), seed=seed, load=cfg.load, capacity_rps=capacity,
        rate_rps=cfg.load * capacity, slo_scale=cfg.slo_scale, solo_ttft_s=solo,
        ttft_slo_s=slo, target=0.15, max_relative_error=max(errs) if errs else None,
        profile={"points": len(before), "repeats": cfg.repeats,
                 "measured_during_run": during.done,
                 "drift_during_over_before": drift(before, in_run),
                 "speed_during_over_before": during.speed_spread(before),
                 "fit": _fit_errors(table, key),
                 "mixed_extra_s": dict(zip(("m0", "m1_per_decode"), table.mixed_terms(key),
                                           strict=True))},
        step_noise=noise.as_dict(),
        kernel_cache=kernel.as_dict(),
        step_fidelity=step_fidelity(table, key, steps),
        step_fidelity_with_kernel_cache=step_fidelity(_replayed(table, kernel), key, steps),
    )  # fmt: skip
    doc["_run"] = {
        "profile_wall_s": profile_s,
        "profile_in_run_s": run["paused_s"],
        "real_wall_s": run["wall_s"],
        "real_cpu_s": run["cpu_s"],
        "real_clock_s": run["clock_s"],
        "cpu_share": run["cpu_s"] / run["wall_s"] if run["wall_s"] > 0 else None,
    }
    return doc


def kernel_cache_capacity(gemm_shapes: int = GEMM_SHAPES) -> int:
    """Step token counts the engine's kernel cache holds: oneDNN's primitive cache capacity
    (`ONEDNN_PRIMITIVE_CACHE_CAPACITY`, 1024 by default) over the GEMM shapes one token count
    builds (`costmodel.kernel_cache`)."""
    raw = os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "")
    primitives = int(raw) if raw.strip().isdigit() else ONEDNN_CACHE_DEFAULT
    return max(0, primitives // max(1, gemm_shapes))


def measure_kernel_cache(folder: Path, cfg: Settings, clock: str, arena_tokens: int) -> Any:
    """The `KernelCache` of this run: `kernel_cache_capacity()` token counts, and the median
    over `KERNEL_PROBES` token counts the profile did not use (prompts of 21, 31, ... tokens)
    of a first prefill minus the second (`bench.profile.measure_kernel_miss`), at least 0."""
    from fineserve.bench.profile import _ints, measure_kernel_miss
    from fineserve.costmodel.kernel_cache import KernelCache
    from fineserve.costmodel.table import mixed_probe_prompts

    used = set()
    for b in _ints(cfg.batch_sizes):
        for n in _ints(cfg.input_lens):
            used |= {b, n, b * n, n + b, sum(mixed_probe_prompts(b, n))}
    lengths = [n for n in range(21, PROMPT_LEN[1] + 60, 10) if n not in used][:KERNEL_PROBES]
    diffs = measure_kernel_miss(folder, NAME, lengths, clock, arena_tokens)
    return KernelCache(kernel_cache_capacity(), max(0.0, float(np.median(diffs))))


class _InRunProfile:
    """The profile grid measured again point by point between the real run's steps (`next`,
    the `probe` of `_real`), `cfg.repeats` passes in interleaved order. `rows(before)`: the
    table the simulation uses, each point's medians over its in-run measurements (the before
    run's row for a point the run ended too early to measure; means, not medians: the table
    predicts mean step times). `timed_steps(table_for, key)`:
    every step the probes timed, for the noise estimate (`costmodel.noise`)."""

    def __init__(self, folder: Path, cfg: Settings, clock: str, arena_tokens: int) -> None:
        from fineserve.bench.profile import _ints

        grid = [(b, n) for b in _ints(cfg.batch_sizes) for n in _ints(cfg.input_lens)]
        self.todo = grid * cfg.repeats
        self.total = len(self.todo)
        self.done = 0
        self.runs: dict[tuple[int, int], list[tuple[float, float, float]]] = {}
        # per probe: (its start on the process timeline, batch, input_len, its steps)
        self.probes: list[tuple[float, int, int, Any]] = []
        self.clock = clock
        self.args = (folder, cfg.output_len, clock, arena_tokens)

    def next(self) -> bool:
        """Measure the next point; False once every point was measured."""
        from fineserve.bench.profile import measure_point_steps

        if self.done >= self.total:
            return False
        batch, input_len = self.todo[self.done]
        folder, output_len, clock, arena_tokens = self.args
        start = _timeline(self.clock)
        steps = measure_point_steps(
            folder, batch, input_len, output_len, NAME, clock, arena_tokens, MIXED_STEPS
        )
        self.probes.append((start, batch, input_len, steps))
        self.runs.setdefault((batch, input_len), []).append(steps.summary)
        self.done += 1
        return self.done < self.total

    def timed_steps(
        self, table_for: Callable[[tuple[int, int]], Any], key: Any
    ) -> list[tuple[float, float, float]]:
        """[(start on the process timeline, prediction, measured seconds)] of every step the
        probes timed (`probe_shapes` gives each step's batch), each predicted by
        `table_for((batch, input_len))` of its point."""
        out = []
        for start, batch, input_len, steps in self.probes:
            table = table_for((batch, input_len))
            times = steps.in_order
            shapes = probe_shapes(
                batch, input_len, len(steps.decode), len(steps.mixed), bool(steps.between)
            )
            for offset, shape, seconds in zip(steps.starts, shapes, times, strict=True):
                out.append((start + offset, table.step_time(key, shape), seconds))
        return out

    def speed_spread(self, before: list[dict[str, Any]]) -> dict[str, float] | None:
        """p10/p50/p90 over every in-run measurement of (its prefill and its TPOT) / (the first
        table's): how much the machine's speed moved during the run (None if nothing ran)."""
        ix = {(r["batch_size"], r["input_len"]): r for r in before}
        ratios = []
        for point, runs in self.runs.items():
            ref = ix[point]
            for pre, tpot, _ in runs:
                if ref["prefill_time"] > 0:
                    ratios.append(pre / ref["prefill_time"])
                if ref["tpot"] > 0:
                    ratios.append(tpot / ref["tpot"])
        if not ratios:
            return None
        p10, p50, p90 = np.percentile(ratios, [10, 50, 90])
        return {"p10": float(p10), "p50": float(p50), "p90": float(p90)}

    def rows(self, before: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from fineserve.bench.profile import row_from_runs

        out = []
        for r in before:
            runs = self.runs.get((r["batch_size"], r["input_len"]))
            out.append(
                row_from_runs(NAME, r["qformat"], r["batch_size"], r["input_len"],
                              r["output_len"], runs, mean=True) if runs else r
            )  # fmt: skip
        return out


def probe_shapes(
    batch: int, input_len: int, decodes: int, mixed: int, between: bool = True
) -> list[Any]:
    """Batch shapes of a profile point's timed steps in the order they ran
    (`bench.profile.measure_point_steps`, `PointSteps.in_order`): the prefill of `batch`
    prompts, `decodes` decode steps (contexts `input_len` + j), then (after an untimed mixed
    step) `mixed` times a decode step of the `batch` sequences of
    `costmodel.table.mixed_probe_prompts` and a step prefilling one prompt beside their
    decodes. Without `between` (probes of the older
    layout), the mixed steps ran back to back beside the first batch's decodes."""
    from fineserve.costmodel.base import BatchShape
    from fineserve.costmodel.table import mixed_probe_prompts

    shapes = [BatchShape(prefill=((input_len, 0),) * batch)]
    shapes += [BatchShape(decode_context=(input_len + j,) * batch) for j in range(decodes)]
    prompt = ((input_len, 0),)
    if not between:
        ctx = input_len + decodes
        return shapes + [
            BatchShape(prefill=prompt, decode_context=(ctx + j,) * batch) for j in range(mixed)
        ]
    lens = mixed_probe_prompts(batch, input_len)
    for j in range(mixed):  # after the untimed mixed step (decodes at the prompt lengths)
        shapes.append(BatchShape(decode_context=tuple(n + 1 + 2 * j for n in lens)))
        shapes.append(BatchShape(prefill=prompt, decode_context=tuple(n + 2 + 2 * j for n in lens)))
    return shapes


def _timeline(clock: str) -> float:
    """Now on the timeline the engine's steps are timed on: the process's CPU seconds for the
    CPU clock, else the monotonic wall clock."""
    return time.process_time() if clock == "cpu" else time.monotonic()


def _fit_errors(cost: Any, key: Any) -> dict[str, float]:
    c = cost.coeffs(key)
    return {
        "prefill_err_mean": c.prefill_err_mean,
        "prefill_err_max": c.prefill_err_max,
        "decode_err_mean": c.decode_err_mean,
        "decode_err_max": c.decode_err_max,
    }


def format_validation(doc: dict[str, Any]) -> str:
    lines = [
        f"validation: {doc['requests']} requests on {doc['model']} (CPU) at "
        f"{doc.get('rate_rps', 0.0):.1f} req/s, TTFT SLO {doc['ttft_slo_s'] * 1e3:.0f} ms",
        f"{'metric':<20} {'real':>10} {'sim':>10} {'rel.err':>8}",
    ]
    for key, err in doc["relative_error"].items():
        r, s = doc["real"][key], doc["sim"][key]
        lines.append(
            f"{key:<20} {_num(r):>10} {_num(s):>10} {'-' if err is None else f'{err:.3f}':>8}"
        )
    for scale, pair in doc.get("attainment_by_scale", {}).items():
        lines.append(
            f"{'attainment @' + scale + 'x':<20} {_num(pair['real']):>10} {_num(pair['sim']):>10}"
        )
    spread = doc.get("profile", {}).get("speed_during_over_before")
    if spread:
        lines.append(
            f"step time during the run / before it (in-run profile): p10 {spread['p10']:.2f}, "
            f"p50 {spread['p50']:.2f}, p90 {spread['p90']:.2f}"
        )
    noise = doc.get("step_noise")
    if noise:
        lines.append(
            f"step-time noise (log sd): fast {noise['sigma_fast']:.3f}, slow "
            f"{noise['sigma_slow']:.3f} over {noise['tau_slow_s']:.2f} s"
        )
    kernel = doc.get("kernel_cache")
    if kernel:
        lines.append(
            f"kernel cache: {kernel['capacity']} token counts, a miss costs "
            f"{kernel['miss_s'] * 1e3:.2f} ms"
        )
    cond = doc.get("conditions")
    if cond:
        lines.append(
            f"clock {cond['clock']}, load average {cond['loadavg_before'][0]:.2f} -> "
            f"{cond['loadavg_after'][0]:.2f}, real run got {_num(cond.get('cpu_share'))} of a core"
        )
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
