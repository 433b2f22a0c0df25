"""`LocalScheduler(interference=...)`: the slack policy costs a lane's queue at the slowdown of
the engine's other lanes in flight beside it."""

from __future__ import annotations

from types import ModuleType

from fineserve.costmodel.base import InterferenceModel
from fineserve.engine.engine import Engine
from fineserve.scheduler.local import SchedulerConfig

A, B = frozenset({"a"}), frozenset({"b"})
DOUBLE = InterferenceModel(prefill_k=1.0, decode_k=0.0)  # two prefill lanes: each 2x slower


def _engine(h: ModuleType, interference: InterferenceModel | None) -> Engine:
    specs = [h.spec("a", ttft=0.03), h.spec("b", ttft=1.0)]
    engine = h.make_engine(specs, policy="slack", config=SchedulerConfig(token_budget=256))
    engine.scheduler.interference = interference
    return engine


def _a_admitted(engine: Engine, b_in_flight: bool) -> bool:
    """Whether a's 150-token prompt (20 ms alone with the test cost model, SLO 30 ms) gets
    into a's lane plan, with b's lane in flight or not."""
    engine.add_request("b0", "b", [1] * 200, max_tokens=2, arrival_s=0.0)
    engine.add_request("a0", "a", [1] * 150, max_tokens=2, arrival_s=0.0)
    if b_in_flight:
        b_plan = engine.begin_step(0.0, B)
        assert not b_plan.empty
    plan = engine.begin_step(0.0, A)
    return any("a0" in batch.request_ids[: batch.num_prefills] for batch in plan.batches)


def test_a_lane_beside_another_in_flight_sees_its_queue_slowed(h: ModuleType) -> None:
    assert _a_admitted(_engine(h, None), b_in_flight=True)  # blind: 20 ms fits 30 ms
    assert not _a_admitted(_engine(h, DOUBLE), b_in_flight=True)  # 40 ms does not


def test_without_other_lanes_in_flight_nothing_changes(h: ModuleType) -> None:
    assert _a_admitted(_engine(h, DOUBLE), b_in_flight=False)


def test_other_engines_in_flight_on_its_gpus_slow_its_queue_too(h: ModuleType) -> None:
    engine = _engine(h, DOUBLE)
    engine.scheduler.neighbours_in_flight = 1  # one step of another engine on its GPUs
    assert not _a_admitted(engine, b_in_flight=False)
    blind = _engine(h, None)
    blind.scheduler.neighbours_in_flight = 1  # without an interference model: no effect
    assert _a_admitted(blind, b_in_flight=False)
