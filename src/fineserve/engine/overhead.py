"""Scheduler overhead per step, measured with the simulated executor (no torch).

`measure_sched_us` fills an engine with `sequences` running requests spread over `models`
co-located models (FP16, FP8, INT4 and FP16 KV of a Llama-3.1-8B shape in a large slab arena),
then times `begin_step` + `finish_step` (scheduler, allocator and output bookkeeping; the
executor's own time excluded) over `steps` steps and returns the median in microseconds.
`stream=False` (default: scheduler and allocator only, the simulator's and offline runs' path)
submits requests that emit only their first and final outputs; `stream=True` adds one
`RequestOutput` per token per sequence (what the server's streams get, about 0.5 us each).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from fineserve.costmodel.base import InstanceKey
from fineserve.engine.clock import VirtualClock, perf_counter
from fineserve.engine.factory import ModelSpec, build_engine
from fineserve.memory.formats import KVDtype, KVFormat
from fineserve.scheduler.local.config import SchedulerConfig, ServedModel
from fineserve.scheduler.local.costs import CostModel
from fineserve.sim.executor import LinearCostModel, SimExecutor

DTYPES = (KVDtype.FP16, KVDtype.FP8, KVDtype.INT4, KVDtype.FP16)


@dataclass(frozen=True)
class Overhead:
    """Median microseconds per step: total, planning (`begin_step`), applying (`finish_step`)."""

    us_per_step: float
    plan_us: float
    update_us: float
    sequences: int


def measure_sched_us(
    policy: str = "saab",
    sequences: int = 256,
    models: int = 4,
    steps: int = 200,
    cost_model: CostModel | None = None,
    stream: bool = False,
) -> Overhead:
    cost = cost_model or LinearCostModel()
    specs = [
        ModelSpec(
            ServedModel(f"m{i}", InstanceKey(f"m{i}", DTYPES[i % 4].value), 1 << 20, 3600.0, 1.0),
            KVFormat(32, 8, 128, DTYPES[i % 4]),
        )
        for i in range(models)
    ]
    engine = build_engine(
        specs,
        sequences * 64 * (2 << 20),
        SimExecutor(cost),
        cost,
        policy=policy,
        config=SchedulerConfig(token_budget=max(512, 2 * sequences), max_running=sequences),
        clock=VirtualClock(),
    )
    for i in range(sequences):
        engine.add_request(f"r{i}", f"m{i % models}", [1] * 128, max_tokens=1 << 30, stream=stream)
    while engine.scheduler.waiting or engine.scheduler.prefilling:
        engine.step()
    clock, executor = engine.clock, engine.executor
    plan_t: list[float] = []
    update_t: list[float] = []
    for _ in range(steps):
        t0 = perf_counter()
        plan = engine.begin_step(clock.now())
        t1 = perf_counter()
        result = executor.execute(plan)
        clock.advance(result.duration_s)
        t2 = perf_counter()
        engine.finish_step(result, clock.now())
        t3 = perf_counter()
        plan_t.append(t1 - t0)
        update_t.append(t3 - t2)
    total = [a + b for a, b in zip(plan_t, update_t, strict=True)]
    return Overhead(
        statistics.median(total) * 1e6,
        statistics.median(plan_t) * 1e6,
        statistics.median(update_t) * 1e6,
        engine.scheduler.num_running(),
    )
