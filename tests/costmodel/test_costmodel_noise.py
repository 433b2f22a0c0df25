"""`costmodel.noise`: seeded step-time noise and its estimate from timed steps."""

from __future__ import annotations

import math
import statistics

import pytest

from fineserve.costmodel.noise import NoiseProcess, StepNoise, estimate_step_noise


def test_default_noise_is_off_and_every_factor_is_exactly_one() -> None:
    assert StepNoise().off
    proc = NoiseProcess(StepNoise(), seed=3)
    assert [proc.factor(d) for d in (0.0, 0.01, 5.0)] == [1.0, 1.0, 1.0]


def test_factors_are_seeded() -> None:
    noise = StepNoise(0.1, 0.2, 0.05)
    a = [NoiseProcess(noise, 7).factor(0.01) for _ in range(3)]
    p, q, r = NoiseProcess(noise, 7), NoiseProcess(noise, 7), NoiseProcess(noise, 8)
    first = [p.factor(0.01) for _ in range(50)]
    assert first == [q.factor(0.01) for _ in range(50)]
    assert first != [r.factor(0.01) for _ in range(50)]
    assert a[0] == a[1] == a[2] == first[0]


def test_factors_have_mean_one_and_the_set_spread() -> None:
    noise = StepNoise(0.15, 0.2, 0.02)
    proc = NoiseProcess(noise, 1)
    logs = [math.log(proc.factor(0.01)) for _ in range(40_000)]
    assert statistics.fmean(math.exp(x) for x in logs) == pytest.approx(1.0, abs=0.02)
    assert statistics.pstdev(logs) == pytest.approx(noise.sigma, rel=0.05)


def test_slow_part_is_correlated_over_short_times_only() -> None:
    noise = StepNoise(0.0, 0.3, 1.0)

    def lag_one(dt: float) -> float:
        proc = NoiseProcess(noise, 2)
        xs = [math.log(proc.factor(dt)) for _ in range(5000)]
        return statistics.correlation(xs[:-1], xs[1:])

    assert lag_one(0.01) > 0.95  # exp(-0.01) = 0.99
    assert abs(lag_one(10.0)) < 0.05  # exp(-10): independent


def _synthetic(noise: StepNoise, seed: int) -> list[tuple[float, float, float]]:
    """Probe-like series: bursts of 12 steps (a 30 ms one, then 5 ms ones) every 0.6 s, the
    process running on in between; measured = predicted x factor x a constant bias."""
    proc = NoiseProcess(noise, seed)
    steps, t = [], 0.0
    for _ in range(60):
        for k in range(12):
            dur = 0.005 if k else 0.03
            steps.append((t, dur, 1.3 * dur * proc.factor(dur)))
            t += dur
        for _ in range(120):
            proc.factor(0.005)
        t += 0.6
    return steps


def test_estimate_recovers_the_parameters_of_synthetic_steps() -> None:
    true = StepNoise(0.15, 0.2, 0.15)
    est = estimate_step_noise(_synthetic(true, 5))
    assert est.sigma_fast == pytest.approx(true.sigma_fast, rel=0.25)
    assert est.sigma_slow == pytest.approx(true.sigma_slow, rel=0.25)
    assert true.tau_slow_s / 2 <= est.tau_slow_s <= true.tau_slow_s * 2
    white = estimate_step_noise(_synthetic(StepNoise(0.2, 0.0, 0.0), 6))
    assert white.sigma_fast == pytest.approx(0.2, rel=0.15)
    assert white.sigma_slow**2 < 0.15 * white.sigma_fast**2  # (almost) all of it fast


def test_estimate_of_a_constant_ratio_is_no_noise() -> None:
    steps = [(0.01 * i, 0.005, 0.0065) for i in range(50)]  # 30% slower, every step alike
    assert estimate_step_noise(steps).off
    assert estimate_step_noise(steps[:2]).off  # too few steps


class _Double:
    def factor(self, duration_s: float) -> float:
        return 2.0


def test_noisy_cost_model_scales_single_and_multi_step_answers() -> None:
    from fineserve.costmodel.base import BatchShape, InstanceKey
    from fineserve.costmodel.fit import StepCoeffs
    from fineserve.costmodel.noise import NoisyCostModel
    from fineserve.costmodel.table import TableCostModel

    key = InstanceKey("m", "fp32")
    table = TableCostModel({key: StepCoeffs((0.002, 1e-4, 0.0, 0.0, 0.0), (0.003, 1e-4, 1e-6))})
    shape = BatchShape(prefill=((30, 0),), decode_context=(40, 50))
    doubled = NoisyCostModel(table, _Double())  # type: ignore[arg-type]
    assert doubled.step_time(key, shape) == 2 * table.step_time(key, shape)
    assert doubled.decode_step_times(key, (40, 50), 3) == [
        2 * t for t in table.decode_step_times(key, (40, 50), 3)
    ]
    off = NoisyCostModel(table, NoiseProcess(StepNoise(), 0))
    assert off.step_time(key, shape) == table.step_time(key, shape)
    noisy = [NoisyCostModel(table, NoiseProcess(StepNoise(0.2, 0.2, 0.1), s)) for s in (1, 1, 2)]
    runs = [m.decode_step_times(key, (40, 50), 20) for m in noisy]
    assert runs[0] == runs[1] != runs[2]
    assert len(set(runs[0])) == 20  # every iteration its own factor
    assert doubled.supports(key) and doubled.interference is table.interference
