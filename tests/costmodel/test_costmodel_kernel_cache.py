"""Kernel-cache misses: an LRU of step token counts; a step whose count is not held pays the
miss (then it is held); the prefill-fraction questions about a mixed step charge nothing and
leave the cache as it is; off = the inner model's times exactly."""

from __future__ import annotations

import pytest

from fineserve.costmodel import BatchShape, InstanceKey, TableCostModel
from fineserve.costmodel.fit import StepCoeffs
from fineserve.costmodel.kernel_cache import CachedCostModel, KernelCache, KernelCacheProcess
from fineserve.sim.stepper import BatchCoster

KEY = InstanceKey("cpu-model", "fp32")
TABLE = TableCostModel({KEY: StepCoeffs((0.004, 1e-4, 0.0, 0.0, 0.0), (0.003, 1e-4, 1e-6))})


def test_lru_of_token_counts() -> None:
    p = KernelCacheProcess(KernelCache(capacity=2, miss_s=0.003))
    assert [p.charge(n) for n in (10, 20, 10)] == [0.003, 0.003, 0.0]
    assert p.charge(30) == 0.003  # evicts 20, the least recently used
    assert p.charge(10) == 0.0
    assert p.charge(20) == 0.003
    assert (p.hits, p.misses) == (2, 4)


def test_off_charges_nothing() -> None:
    for cache in (KernelCache(), KernelCache(0, 0.003), KernelCache(8, 0.0)):
        assert cache.off
        assert KernelCacheProcess(cache).charge(10) == 0.0


def test_steps_pay_a_miss_by_their_token_count() -> None:
    model = CachedCostModel(TABLE, KernelCacheProcess(KernelCache(8, 0.002)))
    pre = BatchShape(prefill=((40, 0),))
    mixed = BatchShape(prefill=((36, 0),), decode_context=(50, 60, 70, 80))  # 40 tokens too
    assert model.step_time(KEY, pre) == pytest.approx(TABLE.step_time(KEY, pre) + 0.002)
    assert model.step_time(KEY, mixed) == pytest.approx(TABLE.step_time(KEY, mixed))
    assert model.step_time(KEY, pre) == pytest.approx(TABLE.step_time(KEY, pre))


def test_fraction_questions_leave_the_cache_alone() -> None:
    process = KernelCacheProcess(KernelCache(8, 0.002))
    model = CachedCostModel(TABLE, process)
    coster = BatchCoster(model)
    mixed = BatchShape(prefill=((36, 0),), decode_context=(50, 60))
    first = model.step_time(KEY, mixed)
    # what BatchCoster asks next for the prefill fraction: no charge, nothing held
    assert model.step_time(KEY, BatchShape(prefill=mixed.prefill)) == pytest.approx(
        TABLE.step_time(KEY, BatchShape(prefill=mixed.prefill))
    )
    model.step_time(KEY, BatchShape(decode_context=mixed.decode_context))
    assert process.misses == 1 and first == pytest.approx(TABLE.step_time(KEY, mixed) + 0.002)
    # a prefill of 36 tokens run afterwards is a miss: the question did not warm it
    assert model.step_time(KEY, BatchShape(prefill=((36, 0),))) == pytest.approx(
        TABLE.step_time(KEY, BatchShape(prefill=((36, 0),))) + 0.002
    )
    assert coster.cost_model is model


def test_decode_iterations_share_one_token_count() -> None:
    model = CachedCostModel(TABLE, KernelCacheProcess(KernelCache(8, 0.002)))
    times = model.decode_step_times(KEY, (50, 60, 70), 3)
    plain = TABLE.decode_step_times(KEY, (50, 60, 70), 3)
    assert times[0] == pytest.approx(plain[0] + 0.002)
    assert times[1:] == pytest.approx(plain[1:])
    assert model.decode_step_times(KEY, (10, 20, 30), 2) == pytest.approx(
        TABLE.decode_step_times(KEY, (10, 20, 30), 2)
    )
