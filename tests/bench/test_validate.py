"""`bench.validate` logic that needs no engine run: workload, capacity, comparison, fidelity."""

from __future__ import annotations

from pathlib import Path

import pytest

from fineserve.bench import validate as v
from fineserve.costmodel.base import BatchShape, InstanceKey
from fineserve.sim.executor import LinearCostModel
from fineserve.workload.metrics import RequestRecord

KEY = InstanceKey(v.NAME, "fp32")


def _rec(
    arrival: float, ttft: float | None, out: int = 5, error: str | None = None
) -> RequestRecord:
    first = None if ttft is None else arrival + ttft
    finish = None if first is None else first + 0.01 * (out - 1)
    return RequestRecord(v.NAME, arrival, first, finish, 10, out, slo_ttft_s=0.1, error=error)


def test_workload_is_seeded_and_within_bounds() -> None:
    a, b = v.workload(50, 10.0, 3), v.workload(50, 10.0, 3)
    assert a == b
    assert a != v.workload(50, 10.0, 4)
    assert all(v.PROMPT_LEN[0] <= r.prompt_tokens < v.PROMPT_LEN[1] for r in a)
    assert all(v.OUTPUT_LEN[0] <= r.output_tokens < v.OUTPUT_LEN[1] for r in a)
    assert [r.arrival_s for r in a] == sorted(r.arrival_s for r in a)


def test_capacity_falls_when_steps_cost_more() -> None:
    cheap = v.capacity_rps(LinearCostModel(fixed_s=0.001), KEY)
    dear = v.capacity_rps(LinearCostModel(fixed_s=0.010), KEY)
    assert cheap > dear > 0


def test_attainment_at_counts_completed_requests_within_the_slo() -> None:
    recs = [_rec(0.0, 0.05), _rec(1.0, 0.2), _rec(2.0, None), _rec(3.0, 0.01, error="rejected")]
    assert v.attainment_at(recs, 0.1) == pytest.approx(0.25)
    assert v.attainment_at(recs, 1.0) == pytest.approx(0.5)
    assert v.attainment_at([], 1.0) == 0.0


def test_compare_reports_relative_errors_and_scales() -> None:
    real = [_rec(float(i), 0.1) for i in range(10)]
    sim = [_rec(float(i), 0.12) for i in range(10)]
    doc = v.compare(real, sim, solo_s=0.0375)
    assert doc["relative_error"]["ttft_s_mean"] == pytest.approx(0.2)
    assert doc["relative_error"]["ttft_s_p90"] == pytest.approx(0.2)
    # 2x solo = 75 ms: both miss; 3x = 112.5 ms: real (100 ms) meets, sim (120 ms) misses
    assert doc["attainment_by_scale"]["2"] == {"real": 0.0, "sim": 0.0}
    assert doc["attainment_by_scale"]["3"] == {"real": 1.0, "sim": 0.0}
    assert doc["attainment_by_scale"]["5"] == {"real": 1.0, "sim": 1.0}
    assert "attainment_by_scale" not in v.compare(real, sim)


def test_step_fidelity_groups_by_kind() -> None:
    cost = LinearCostModel(fixed_s=0.01, per_token_s=0.0, per_context_s=0.0)
    steps = [
        (BatchShape(decode_context=(10,)), 0.01),
        (BatchShape(decode_context=(10, 20)), 0.02),
        (BatchShape(prefill=((5, 0),)), 0.005),
        (BatchShape(prefill=((5, 0),), decode_context=(3,)), 0.01),
        (BatchShape(decode_context=(1,)), 0.0),  # not timed: left out
    ]
    fid = v.step_fidelity(cost, KEY, steps)
    assert fid["decode"]["steps"] == 2
    assert fid["decode"]["pred_over_real_median"] == pytest.approx(0.75)
    assert fid["decode"]["pred_over_real_sum"] == pytest.approx(2 * 0.01 / 0.03)
    assert fid["prefill"]["pred_over_real_sum"] == pytest.approx(2.0)
    assert fid["mixed"]["pred_over_real_sum"] == pytest.approx(1.0)


def test_clock_kind_from_argument_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(v.CLOCK_ENV, raising=False)
    assert v._clock_kind(None) == "cpu"
    monkeypatch.setenv(v.CLOCK_ENV, "wall")
    assert v._clock_kind(None) == "wall"
    assert v._clock_kind("cpu") == "cpu"
    with pytest.raises(ValueError, match="clock"):
        v._clock_kind("gpu")


def test_format_mentions_conditions() -> None:
    real = [_rec(float(i), 0.1) for i in range(4)]
    doc = v.compare(real, real, solo_s=0.05)
    doc.update(model=v.NAME, requests=4, rate_rps=2.0, ttft_slo_s=0.25)
    doc["conditions"] = {"clock": "cpu", "loadavg_before": (1.0, 1.0, 1.0),
                         "loadavg_after": (2.0, 1.0, 1.0), "cpu_share": 0.5}  # fmt: skip
    doc["step_noise"] = {"sigma_fast": 0.1, "sigma_slow": 0.2, "tau_slow_s": 0.5}
    text = v.format_validation(doc)
    assert "clock cpu" in text and "0.5000 of a core" in text and "attainment @5x" in text
    assert "fast 0.100, slow 0.200 over 0.50 s" in text


def test_pausable_clock_hides_paused_time() -> None:
    from fineserve.engine.clock import VirtualClock

    inner = VirtualClock(10.0)
    clock = v.PausableClock(inner)
    assert clock.now() == 10.0
    with clock.pause():
        inner.advance(3.0)  # e.g. a profile point measured between two steps
    assert clock.now() == 10.0
    inner.advance(1.0)
    assert clock.now() == 11.0
    clock.sleep_until(12.0)  # the inner clock is asked for its own time of 12 s on this one
    assert inner.now() == 15.0 and clock.now() == 12.0
    with pytest.raises(RuntimeError), clock.pause():
        inner.advance(2.0)
        raise RuntimeError("probe failed")
    assert clock.now() == 12.0  # paused time is hidden even when the probe raises


def test_in_run_profile_rows_use_run_measurements_else_the_first_table(tmp_path: Path) -> None:
    from fineserve.bench.profile import row_from_runs

    cfg = v.Settings(10, 0.5, 5.0, "1,2", "16", 8, 2)
    prof = v._InRunProfile(tmp_path, cfg, "cpu", 1024)
    assert prof.total == 4 and prof.todo == [(1, 16), (2, 16), (1, 16), (2, 16)]
    before = [row_from_runs(v.NAME, "fp32", b, 16, 8, [(1.0, 0.1, 0.5)]) for b in (1, 2)]
    prof.runs[(1, 16)] = [(2.0, 0.2, 0.7), (4.0, 0.4, 0.9), (9.0, 0.9, 1.1)]
    rows = prof.rows(before)
    assert rows[0]["prefill_time"] == pytest.approx(5.0)  # mean of the in-run runs
    assert rows[0]["tpot"] == pytest.approx(0.5)
    assert rows[0]["mixed_time"] == pytest.approx(0.9)
    assert rows[1] is before[1]  # not measured during the run: the first table's row


def test_in_run_speed_spread(tmp_path: Path) -> None:
    from fineserve.bench.profile import row_from_runs

    cfg = v.Settings(10, 0.5, 5.0, "1", "16", 8, 1)
    prof = v._InRunProfile(tmp_path, cfg, "cpu", 1024)
    before = [row_from_runs(v.NAME, "fp32", 1, 16, 8, [(1.0, 0.1, 0.5)])]
    assert prof.speed_spread(before) is None
    prof.runs[(1, 16)] = [(2.0, 0.2, 0.7)]  # twice as slow in both
    assert prof.speed_spread(before) == pytest.approx({"p10": 2.0, "p50": 2.0, "p90": 2.0})


def test_compare_averages_several_simulations() -> None:
    real = [_rec(float(i), 0.1) for i in range(10)]
    sims = [[_rec(float(i), 0.1) for i in range(10)], [_rec(float(i), 0.15) for i in range(10)]]
    doc = v.compare(real, sims, solo_s=0.0375)
    assert doc["sim"]["ttft_s_mean"] == pytest.approx(0.125)
    assert doc["relative_error"]["ttft_s_mean"] == pytest.approx(0.25)
    assert doc["sim_runs"] == 2
    assert doc["sim_spread"]["ttft_s_mean"] == pytest.approx(0.025 / 0.125)  # sd / mean
    # 3x solo = 112.5 ms: the first simulation meets it, the second (150 ms) does not
    assert doc["attainment_by_scale"]["3"] == {"real": 1.0, "sim": 0.5}
    assert doc["attainment_by_scale"]["5"]["sim"] == pytest.approx(1.0)
    one = v.compare(real, sims[1])
    assert one == v.compare(real, [sims[1]])
    assert one["relative_error"]["ttft_s_mean"] == pytest.approx(0.5)
    assert "sim_runs" not in one


def test_probe_shapes_follow_measure_point_steps() -> None:
    shapes = v.probe_shapes(2, 16, 3, 2)
    assert [s.prefill for s in shapes[:1]] == [((16, 0), (16, 0))]
    assert [s.decode_context for s in shapes[1:4]] == [(16, 16), (17, 17), (18, 18)]
    # mixed steps: beside two sequences of prompts 8 and 16 (uneven contexts), after an
    # untimed mixed step, each after one decode step of theirs
    assert shapes[4] == BatchShape(decode_context=(9, 17))
    assert shapes[5] == BatchShape(prefill=((16, 0),), decode_context=(10, 18))
    assert shapes[6] == BatchShape(decode_context=(11, 19))
    assert shapes[7] == BatchShape(prefill=((16, 0),), decode_context=(12, 20))
    assert len(shapes) == 8
    # probes of the older layout (`PointSteps.between` empty): mixed back to back
    old = v.probe_shapes(2, 16, 3, 2, between=False)
    assert old[4:] == [BatchShape(prefill=((16, 0),), decode_context=(c, c)) for c in (19, 20)]


def test_probe_shapes_are_the_steps_the_engine_runs(tmp_path: Path) -> None:
    """The shapes `probe_shapes` names are the batches `measure_point_steps` makes the real
    engine run (tiny model), timed step by timed step."""
    from fineserve.bench import profile
    from fineserve.engine.engine import Engine
    from fineserve.execution import make_model

    folder = make_model.write_model(tmp_path / "tiny", "llama", "tiny")
    ran: list[BatchShape] = []
    original = Engine.step

    def step(self: Engine) -> object:
        ran_before = len(ran)
        inner = self.executor.execute

        def execute(plan: object) -> object:
            ran.extend(b.shape() for b in plan.batches)  # type: ignore[attr-defined]
            return inner(plan)

        self.executor.execute = execute  # type: ignore[method-assign]
        try:
            return original(self)
        finally:
            del self.executor.execute
            assert len(ran) <= ran_before + 1

    timed: list[BatchShape] = []
    original_timed = profile._timed_step

    def timed_step(engine: Engine) -> float:
        n = len(ran)
        seconds = original_timed(engine)
        timed.extend(ran[n:])
        return seconds

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Engine, "step", step)
        mp.setattr(profile, "_timed_step", timed_step)
        steps = profile.measure_point_steps(folder, 3, 20, 3, "tiny", "cpu", 256, 2)
    assert timed == v.probe_shapes(3, 20, 2, 2)
    assert len(steps.in_order) == len(timed) == len(steps.starts)


def test_timed_steps_pair_each_probe_step_with_its_prediction(tmp_path: Path) -> None:
    from fineserve.bench.profile import PointSteps

    cfg = v.Settings(10, 0.5, 5.0, "1", "16", 3, 1)
    prof = v._InRunProfile(tmp_path, cfg, "cpu", 1024)
    steps = PointSteps(0.02, (0.004, 0.005), (0.03,), (0.0, 0.02, 0.024, 0.029))
    prof.probes.append((10.0, 1, 16, steps))
    prof.probes.append((11.0, 1, 32, PointSteps(0.03, (0.005,), (0.04,), (0.0, 0.03, 0.035))))
    tables = {
        (1, 16): LinearCostModel(fixed_s=0.001, per_token_s=0.0, per_context_s=0.0),
        (1, 32): LinearCostModel(fixed_s=0.002, per_token_s=0.0, per_context_s=0.0),
    }
    timed = prof.timed_steps(tables.__getitem__, KEY)
    assert [t for t, _, _ in timed] == pytest.approx([10.0, 10.02, 10.024, 10.029, 11.0, 11.03,
                                                      11.035])  # fmt: skip
    assert [m for _, _, m in timed] == [0.02, 0.004, 0.005, 0.03, 0.03, 0.005, 0.04]
    # each probe's steps predicted by its own point's table
    assert [p for _, p, _ in timed] == pytest.approx([0.001] * 4 + [0.002] * 3)
    assert steps.summary == pytest.approx((0.02, 0.0045, 0.03))


def _tiny_sim(
    noise: object, seed: int, scale: float = 1.0, process: object = None, slo: float = 0.5
) -> list[RequestRecord]:
    from fineserve.costmodel.fit import StepCoeffs
    from fineserve.costmodel.table import TableCostModel
    from fineserve.memory.formats import KVFormat

    coeffs = StepCoeffs(
        prefill=(scale * 0.002, scale * 1e-4, scale * 1e-7, 0.0, 0.0),
        decode=(scale * 0.002, scale * 1e-4, scale * 1e-6),
    )
    cost = TableCostModel({KEY: coeffs})
    reqs = v.workload(60, 80.0, 1)
    return v._simulated(reqs, KVFormat(2, 2, 64), 64 << 20, slo, cost, noise, seed, process)


class _Double:
    """A noise process whose every factor is 2."""

    def factor(self, duration_s: float) -> float:
        return 2.0


def test_noise_reaches_every_simulated_step() -> None:
    """Factor 2 on every step = a table twice as slow (with an SLO nothing misses, the
    scheduler's choices do not depend on its predictions): the same records."""
    doubled = _tiny_sim(None, 0, process=_Double(), slo=1e6)
    slow = _tiny_sim(None, 0, scale=2.0, slo=1e6)
    assert doubled == slow
    assert doubled != _tiny_sim(None, 0, slo=1e6)


def test_simulation_noise_is_seeded_and_off_by_default() -> None:
    from fineserve.costmodel.noise import StepNoise

    plain = _tiny_sim(None, 0)
    assert _tiny_sim(StepNoise(), 3) == plain  # no noise: the deterministic simulation
    noisy = _tiny_sim(StepNoise(0.2, 0.3, 0.05), 3)
    assert noisy == _tiny_sim(StepNoise(0.2, 0.3, 0.05), 3)
    assert noisy != plain
    assert noisy != _tiny_sim(StepNoise(0.2, 0.3, 0.05), 4)
    ttft = [r.ttft_s for r in noisy if r.ttft_s is not None]
    assert len(ttft) == len(noisy)  # every request still completes


def test_kernel_cache_misses_slow_the_simulated_steps() -> None:
    from fineserve.costmodel.fit import StepCoeffs
    from fineserve.costmodel.kernel_cache import KernelCache
    from fineserve.costmodel.table import TableCostModel
    from fineserve.memory.formats import KVFormat

    cost = TableCostModel({KEY: StepCoeffs((0.002, 1e-4, 1e-7, 0.0, 0.0), (0.002, 1e-4, 1e-6))})
    reqs = v.workload(60, 80.0, 1)

    def ttft(kernel: KernelCache | None) -> float:
        records = v._simulated(reqs, KVFormat(2, 2, 64), 64 << 20, 0.5, cost, kernel=kernel)
        return sum(r.ttft_s for r in records if r.ttft_s is not None) / len(records)

    plain = ttft(None)
    assert ttft(KernelCache()) == plain  # off: the table's times exactly
    # a cache too small for the workload's token counts: every prefill pays the miss
    assert ttft(KernelCache(capacity=1, miss_s=0.004)) > plain + 0.003
    # a cache holding every count pays once per count only: less than that
    assert plain < ttft(KernelCache(capacity=10_000, miss_s=0.004)) < ttft(KernelCache(1, 0.004))


def test_step_fidelity_with_the_kernel_cache_charges_first_sights() -> None:
    from fineserve.costmodel.fit import StepCoeffs
    from fineserve.costmodel.kernel_cache import KernelCache
    from fineserve.costmodel.table import TableCostModel

    cost = TableCostModel({KEY: StepCoeffs((0.002, 1e-4, 0.0, 0.0, 0.0), (0.002, 0.0, 0.0))})
    shape = BatchShape(prefill=((40, 0),))
    table_s = cost.step_time(KEY, shape)
    # the real run: the first prefill of 40 tokens paid 3 ms more than the second
    steps = [(shape, table_s + 0.003), (shape, table_s)]
    plain = v.step_fidelity(cost, KEY, steps)["prefill"]
    cached = v.step_fidelity(v._replayed(cost, KernelCache(8, 0.003)), KEY, steps)["prefill"]
    assert plain["pred_over_real_sum"] < 0.99
    assert cached["pred_over_real_sum"] == pytest.approx(1.0)
    assert v._replayed(cost, KernelCache()) is cost
