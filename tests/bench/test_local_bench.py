"""`bench local` bookkeeping that needs no engine: round order, aggregation, ratios."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from fineserve.bench import local


def _run(att: float, leaked: int = 0, preempt: int = 0) -> dict[str, Any]:
    lat = {"p50": att, "p90": 2 * att, "p99": 3 * att}
    model = {
        "requests": 10, "completed": 9, "slo_attainment": att, "goodput_rps": 10 * att,
        "tokens_per_s": 100 * att, "ttft_s": lat, "tpot_s": lat, "preemptions": preempt,
    }  # fmt: skip
    out = dict(model)
    out.update(pages_leaked=leaked, rejected=1, cpu_share=0.5, wall_s=1.0, models={"m": model})
    return out


def test_rounds_rotate_so_every_policy_takes_every_position() -> None:
    pols = ["fcfs", "saab", "prism", "slack"]
    orders = [local.round_order(pols, r) for r in range(4)]
    assert orders[0] == pols
    assert orders[1] == ["saab", "prism", "slack", "fcfs"]
    for i in range(4):
        assert sorted(o[i] for o in orders) == sorted(pols)


def test_run_rounds_interleaves_policies() -> None:
    calls: list[str] = []

    def one(p: str) -> dict[str, Any]:
        calls.append(p)
        return _run(0.5)

    runs = local.run_rounds(["fcfs", "saab"], 3, lambda _: None, one)
    assert calls == ["fcfs", "saab", "saab", "fcfs", "fcfs", "saab"]
    assert [r["round"] for r in runs["saab"]] == [0, 1, 2]


def test_aggregate_takes_medians_spread_and_worst_leak() -> None:
    agg = local.aggregate([_run(0.2), _run(0.9, leaked=3, preempt=4), _run(0.4, preempt=2)])
    assert agg["slo_attainment"] == pytest.approx(0.4)
    assert agg["spread"]["slo_attainment"] == [0.2, 0.9]
    assert agg["goodput_rps"] == pytest.approx(4.0)
    assert agg["ttft_s"]["p90"] == pytest.approx(0.8)
    assert agg["pages_leaked"] == 3  # any leaking run shows
    assert agg["preemptions"] == 2
    assert agg["models"]["m"]["slo_attainment"] == pytest.approx(0.4)
    assert agg["models"]["m"]["preemptions"] == 2
    assert [r["slo_attainment"] for r in agg["runs"]] == [0.2, 0.9, 0.4]


def test_ratios_median_and_paired() -> None:
    runs = {"fcfs": [_run(0.1), _run(0.4)], "saab": [_run(0.5), _run(0.6)]}
    pols = {p: local.aggregate(r) for p, r in runs.items()}
    got = local.ratios(pols, runs)
    assert got["saab_over_fcfs"] == pytest.approx(0.55 / 0.25)
    assert got["saab_over_fcfs_paired"] == pytest.approx((5.0 + 1.5) / 2)
    assert local.ratios({"saab": pols["saab"]}, runs)["saab_over_fcfs"] is None
    zero = {"fcfs": [_run(0.0)], "saab": [_run(0.5)]}
    assert local.ratios({p: local.aggregate(r) for p, r in zero.items()}, zero) == {
        "saab_over_fcfs": None,
        "saab_over_fcfs_paired": None,
    }


def test_scenarios_and_arguments() -> None:
    assert local.SCENARIOS["tight"].arena_mib < local.SCENARIOS["default"].arena_mib
    parser = argparse.ArgumentParser()
    local.add_arguments(parser)
    args = parser.parse_args(["--scenario", "tight"])
    assert args.repeats >= 2 and args.clock == "cpu" and args.arena_mib is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--scenario", "roomy"])


def test_unknown_policy_is_a_user_error() -> None:
    from fineserve.cli import CliError

    with pytest.raises(CliError, match="unknown policy"):
        local._policies("fcfs,fastest")
    assert local._policies(" fcfs, saab ") == ["fcfs", "saab"]


def test_scaled_cost_multiplies_and_delegates() -> None:
    from fineserve.costmodel.base import BatchShape, InstanceKey
    from fineserve.sim.executor import LinearCostModel

    inner, key = LinearCostModel(), InstanceKey("m", "fp16")
    shape = BatchShape(decode_context=(10, 20))
    scaled = local.ScaledCost(inner, 1.5)
    assert scaled.step_time(key, shape) == pytest.approx(1.5 * inner.step_time(key, shape))
    assert scaled.supports(key)
    with pytest.raises(ValueError, match="factor"):
        local.ScaledCost(inner, 0.0)


def test_scale_run_stretches_time_not_requests() -> None:
    slo = {"prefill_s": 0.01, "decode_s": 0.002, "ttft_slo_s": 0.25, "tpot_slo_s": 0.1}
    plan = {"capacity_rps": 10.0, "rate_rps": 15.0, "shares": [1.0], "slos": {"m": slo}}
    work = [(0.5, "m", [1, 2, 3], 4), (1.0, "m", [5], 2)]
    p2, w2 = local.scale_run(plan, work, 2.0)
    assert [t for t, *_ in w2] == [1.0, 2.0]
    assert [rest for _, *rest in w2] == [rest for _, *rest in work]
    assert p2["slos"]["m"]["ttft_slo_s"] == pytest.approx(0.5)
    assert p2["slos"]["m"]["tpot_slo_s"] == pytest.approx(0.2)
    assert p2["rate_rps"] == pytest.approx(7.5) and p2["capacity_rps"] == pytest.approx(5.0)
    assert plan["slos"]["m"]["ttft_slo_s"] == 0.25  # the input is left alone
