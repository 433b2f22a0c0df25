"""Metrics on hand-made records; every expected number is worked out by hand below."""

from __future__ import annotations

import json

import pytest

from fineserve.workload.metrics import (
    RequestRecord,
    latency_stats,
    measurement_window,
    summarize,
)


def _records() -> list[RequestRecord]:
    return [
        # a: TTFT 0.5, TPOT (3.5-0.5)/3 = 1.0, ITLs 1,1,1; meets TTFT 1.0 and TPOT 1.0
        RequestRecord("a", 0.0, 0.5, 3.5, 10, 4, [0.5, 1.5, 2.5, 3.5], 1.0, 1.0),
        # a: TTFT 2.0 > 1.0 -> miss; TPOT (4-3)/1 = 1.0
        RequestRecord("a", 1.0, 3.0, 4.0, 10, 2, [3.0, 4.0], 1.0, 1.0),
        # a: dropped -> miss
        RequestRecord("a", 2.0, prompt_tokens=10, output_tokens=0, slo_ttft_s=1.0, error="rej"),
        # b: TTFT 1.0, 1 output token (no TPOT), no SLOs -> meets
        RequestRecord("b", 0.0, 1.0, 1.0, 5, 1),
        # b: TTFT 0.2, TPOT (2.2 - 0.2)/4 = 0.5 > 0.4 -> miss on TPOT only
        RequestRecord("b", 0.0, 0.2, 2.2, 5, 5, slo_ttft_s=0.5, slo_tpot_s=0.4),
    ]


def test_record_properties() -> None:
    a, _, dropped, b1, b2 = _records()
    assert a.ttft_s == 0.5 and a.tpot_s == 1.0 and a.e2e_s == 3.5 and a.itls_s == [1.0] * 3
    assert dropped.ttft_s is None and not dropped.meets_slo()
    assert b1.tpot_s is None and b1.meets_slo()
    assert b2.meets_ttft() and not b2.meets_tpot()


def test_summary_by_hand() -> None:
    s = summarize(_records(), duration_s=10.0)
    assert s["requests"] == 5 and s["completed"] == 4 and s["failed"] == 1
    assert s["slo_met"] == 2  # a[0] and b[0]
    assert s["slo_attainment"] == pytest.approx(2 / 5)
    assert s["goodput_rps"] == pytest.approx(0.2)
    assert s["throughput_rps"] == pytest.approx(0.4)
    assert s["tokens_per_s"] == pytest.approx((4 + 2 + 1 + 5) / 10)
    # TTFT SLO set on a0, a1, a_dropped, b2: met by a0 and b2 -> 2/4
    assert s["ttft_slo_attainment"] == pytest.approx(0.5)
    # TPOT SLO set on a0, a1, b2: met by a0, a1 -> 2/3
    assert s["tpot_slo_attainment"] == pytest.approx(2 / 3)
    # TTFTs of completed: 0.5, 2.0, 1.0, 0.2 -> sorted 0.2 0.5 1.0 2.0
    t = s["ttft_s"]
    assert t["mean"] == pytest.approx(3.7 / 4)
    assert t["p50"] == pytest.approx(0.75)  # halfway between 0.5 and 1.0
    assert t["p90"] == pytest.approx(1.0 + 0.7 * 1.0)  # rank 2.7: 1.0 + 0.7*(2.0-1.0)
    assert t["p99"] == pytest.approx(1.0 + 0.97 * 1.0)
    # TPOTs: 1.0, 1.0, 0.5 -> p50 = 1.0, mean 2.5/3
    assert s["tpot_s"]["p50"] == pytest.approx(1.0)
    assert s["tpot_s"]["mean"] == pytest.approx(2.5 / 3)
    # ITLs only from records with token times: 1,1,1 and 1
    assert s["itl_s"]["mean"] == pytest.approx(1.0)
    # E2E: 3.5, 3.0, 1.0, 2.2
    assert s["e2e_s"]["p50"] == pytest.approx((2.2 + 3.0) / 2)
    json.dumps(s)  # serialisable


def test_per_model_summary() -> None:
    s = summarize(_records(), duration_s=10.0)
    a, b = s["models"]["a"], s["models"]["b"]
    assert a["requests"] == 3 and a["slo_met"] == 1 and a["slo_attainment"] == pytest.approx(1 / 3)
    assert b["requests"] == 2 and b["slo_met"] == 1 and b["ttft_slo_attainment"] == 1.0
    assert b["tpot_slo_attainment"] == 0.0
    assert b["tokens_per_s"] == pytest.approx(0.6)


def test_empty_and_bad_duration() -> None:
    s = summarize([], duration_s=1.0)
    assert s["requests"] == 0 and s["slo_attainment"] is None and s["ttft_s"]["p99"] is None
    assert s["models"] == {}
    with pytest.raises(ValueError):
        summarize([], duration_s=0.0)
    assert latency_stats([2.0]) == {"mean": 2.0, "p50": 2.0, "p90": 2.0, "p99": 2.0}


def test_measurement_window() -> None:
    assert measurement_window(_records()) == pytest.approx(4.0)
