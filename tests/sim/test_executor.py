"""The simulated executor: cost-model step times, deterministic tokens, the Executor protocol."""

from __future__ import annotations

import pytest

from fineserve.costmodel.base import BatchShape, InstanceKey
from fineserve.costmodel.registry import make_cost_model
from fineserve.engine.overhead import measure_sched_us
from fineserve.engine.step import Executor, ModelBatch, StepPlan
from fineserve.sim.executor import LinearCostModel, SimExecutor, token_stream

KEY_A = InstanceKey("a", "fp16")
KEY_B = InstanceKey("b", "awq")


def plan() -> StepPlan:
    a = ModelBatch("a", KEY_A, ["p", "d"], [[1] * 10, [7]], [0, 40], [[0], [1, 2, 3]],
                   [True, True], [None, None], [0, 3], num_prefills=1)  # fmt: skip
    b = ModelBatch("b", KEY_B, ["c"], [[1] * 8], [16], [[4, 5]], [False], [None], [0], 1)
    return StepPlan(step_id=3, now=1.0, batches=[a, b])


def test_step_time_is_the_cost_models_sum_over_instances() -> None:
    cost = LinearCostModel(fixed_s=0.01, per_token_s=0.001, per_context_s=0.0)
    result = SimExecutor(cost, slowdown=2.0).execute(plan())
    # a: 0.01 + 11 tokens * 0.001; b: 0.01 + 8 * 0.001
    assert result.duration_s == pytest.approx(2.0 * (0.021 + 0.018))
    assert result.step_id == 3


def test_only_sampling_sequences_get_tokens_from_the_fixed_stream() -> None:
    result = SimExecutor(LinearCostModel(), vocab_size=1000).execute(plan())
    assert result.tokens == {"p": token_stream("p", 10, 1000), "d": token_stream("d", 41, 1000)}
    assert isinstance(SimExecutor(LinearCostModel()), Executor)


def test_shape_matches_the_plan() -> None:
    shape = plan().batches[0].shape()
    assert shape == BatchShape(prefill=((10, 0),), decode_context=(40,))


def test_works_with_the_h100_table_cost_model() -> None:
    cost = make_cost_model("h100-table")
    key = InstanceKey("llama-3.1-8b", "fp16")
    batch = ModelBatch("m", key, ["x"], [[1] * 256], [0], [list(range(16))], [True], [None], [0], 1)
    result = SimExecutor(cost).execute(StepPlan(1, 0.0, [batch]))
    assert 0.001 < result.duration_s < 1.0


def test_scheduler_overhead_measurement_runs_256_sequences() -> None:
    overhead = measure_sched_us("saab", sequences=256, models=4, steps=20)
    assert overhead.sequences == 256
    assert overhead.us_per_step > 0 and overhead.plan_us > 0 and overhead.update_us > 0


def test_scheduler_overhead_measurement_with_streaming_outputs() -> None:
    overhead = measure_sched_us("fcfs", sequences=64, models=2, steps=10, stream=True)
    assert overhead.sequences == 64 and overhead.update_us > 0
