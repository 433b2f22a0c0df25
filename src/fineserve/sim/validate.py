"""`fineserve sim --validate`: the simulator against the real CPU engine on the same workload.

1. Make a small random-weight Llama folder (`fineserve make-model`), measure its CPU cost table
   with the code of `fineserve profile` (`bench.profile.profile_rows`), fit it
   (`TableCostModel.from_csv`).
2. Serve a seeded Poisson workload with the real engine (torch executor, wall clock, KV Slab,
   SAAB), requests injected at their arrival times, records noted as outputs stream out.
3. Simulate the same requests on one GPU group with that cost table, the same arena, policy
   and token budget.
4. Report both summaries and the relative error of mean/p90 TTFT and TPOT and of attainment.

This module drives a real engine, so it (and only it in `sim/`) uses the wall clock, through
`engine.clock.WallClock`; torch is imported lazily by the engine's torch executor.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fineserve.sim.loop import SimRequest
from fineserve.workload.metrics import RequestRecord, measurement_window, summarize

NAME = "small-llama"
TOKEN_BUDGET = 512
KEYS = (("ttft_s", "mean"), ("ttft_s", "p90"), ("tpot_s", "mean"), ("tpot_s", "p90"))


def _make_model(root: Path) -> Path:
    from fineserve.execution import make_model

    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the report / JSON
        return make_model.write_model(root / NAME, "llama", "small")


def _profile(folder: Path, root: Path, quick: bool) -> Path:
    from fineserve.bench.profile import profile_rows
    from fineserve.costmodel.profile import write_profile

    args = argparse.Namespace(
        model=folder, name=NAME, qformat="fp32",
        batch_sizes="1,4,8" if quick else "1,2,4,8,16",
        input_lens="32,128" if quick else "32,64,128,256",
        output_len=6, repeats=1 if quick else 2,
    )  # fmt: skip
    path = root / "cpu-profile.csv"
    write_profile(path, profile_rows(args))
    return path


def workload(n: int, rate: float, seed: int) -> list[SimRequest]:
    """Seeded Poisson arrivals with prompts of 16..200 and outputs of 4..40 tokens."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, size=n))
    prompts = rng.integers(16, 200, size=n)
    outputs = rng.integers(4, 40, size=n)
    return [
        SimRequest(f"v{i}", NAME, float(t), int(p), int(o))
        for i, (t, p, o) in enumerate(zip(times, prompts, outputs, strict=True))
    ]


def _real(folder: Path, reqs: list[SimRequest], arena: int, slo: float, cost: Any) -> list:
    from fineserve.engine.clock import WallClock
    from fineserve.engine.torch_executor import TorchModel, load_torch_engine
    from fineserve.execution.sampling import SamplingParams
    from fineserve.scheduler.local import SchedulerConfig
    from fineserve.sim.records import RecordBook

    clock = WallClock()
    engine, _ = load_torch_engine(
        [TorchModel(NAME, folder, ttft_slo_s=slo)], arena, cost, policy="saab",
        config=SchedulerConfig(token_budget=TOKEN_BUDGET), clock=clock,
    )  # fmt: skip
    params = SamplingParams(temperature=0.0, ignore_eos=True)
    book = RecordBook()
    pending = list(reqs)
    t0 = clock.now()
    while pending or engine.has_work():
        now = clock.now() - t0
        while pending and pending[0].arrival_s <= now:
            r = pending.pop(0)
            book.arrive(r.request_id, NAME, r.arrival_s, r.prompt_tokens, slo, None)
            prompt = [(7 * k + len(pending)) % 2000 + 3 for k in range(r.prompt_tokens)]
            engine.add_request(r.request_id, NAME, prompt, r.output_tokens, sampling=params,
                               arrival_s=r.arrival_s + t0)  # fmt: skip
        if not engine.has_work():
            clock.sleep_until(t0 + pending[0].arrival_s)
            continue
        outputs = engine.step()
        book.apply(outputs, clock.now() - t0)
    return book.values()


def _simulated(reqs: list[SimRequest], kv: Any, arena: int, slo: float, cost: Any) -> list:
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
    return sim.run(reqs).values()


def _rel(sim: float | None, real: float | None) -> float | None:
    if sim is None or real is None or real == 0:
        return None
    return abs(sim - real) / abs(real)


def compare(real: list[RequestRecord], simmed: list[RequestRecord]) -> dict[str, Any]:
    """Summaries of both runs and the relative errors (sim vs real)."""
    window = max(measurement_window(real), measurement_window(simmed))
    a, b = summarize(real, window), summarize(simmed, window)
    errors = {f"{m}_{s}": _rel(b[m][s], a[m][s]) for m, s in KEYS}
    errors["slo_attainment"] = _rel(b["slo_attainment"], a["slo_attainment"])
    return {"real": _brief(a), "sim": _brief(b), "relative_error": errors}


def _brief(s: dict[str, Any]) -> dict[str, Any]:
    out = {f"{m}_{k}": s[m][k] for m, k in KEYS}
    out.update(slo_attainment=s["slo_attainment"], requests=s["requests"])
    return out


def run_validation(
    quick: bool = False, seed: int = 0, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The validation document (see the module docstring)."""
    from fineserve.costmodel.table import TableCostModel
    from fineserve.execution.instance import load_instance
    from fineserve.sim.workload import solo_ttft

    say = progress or (lambda _: None)
    # one torch thread: profile and real run then see the same, steadier per-step cost on a
    # shared machine (must be set before the engine imports torch)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="fineserve-validate-") as tmp:
        root = Path(tmp)
        folder = _make_model(root)
        say("profiling the CPU engine (fineserve profile code path) ...")
        cost = TableCostModel.from_csv(_profile(folder, root, quick))
        kv = load_instance(folder, None, None, 16, 0).kv_format
        from fineserve.bench.profile import _arena_bytes

        # the same arena rule as the profile: the CPU attention path's cost grows with it
        arena = _arena_bytes(folder, 16 * 240)
        reqs = workload(24 if quick else 60, 3.0 if quick else 4.0, seed)
        from fineserve.sim.catalog import ModelType

        probe = ModelType(NAME, "fp32", 1, kv, 1, max_model_len=4096)
        slo = 3.0 * solo_ttft(cost, probe, 108, TOKEN_BUDGET)
        say(f"serving {len(reqs)} requests on the real engine (TTFT SLO {slo * 1e3:.0f} ms) ...")
        real = _real(folder, reqs, arena, slo, cost)
        simmed = _simulated(reqs, kv, arena, slo, cost)
    doc = compare(real, simmed)
    doc.update(model=NAME, requests=len(reqs), ttft_slo_s=slo, target=0.15)
    errs = [v for v in doc["relative_error"].values() if v is not None]
    doc["max_relative_error"] = max(errs) if errs else None
    return doc


def format_validation(doc: dict[str, Any]) -> str:
    lines = [f"validation: {doc['requests']} requests on {doc['model']} (CPU)"]
    lines.append(f"{'metric':<20} {'real':>10} {'sim':>10} {'rel.err':>8}")
    for key, err in doc["relative_error"].items():
        r, s = doc["real"][key], doc["sim"][key]
        lines.append(
            f"{key:<20} {_num(r):>10} {_num(s):>10} {'-' if err is None else f'{err:.3f}':>8}"
        )
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
