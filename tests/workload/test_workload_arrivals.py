"""Arrival generators: rate and CV within statistical tolerance for fixed seeds."""

from __future__ import annotations

import itertools
import math

import pytest

from fineserve.workload.arrivals import (
    attach_lengths,
    gamma_arrivals,
    interarrival_cv,
    poisson_arrivals,
    power_law_shares,
    scale_trace,
    split_by_shares,
    split_by_slices,
)
from fineserve.workload.traces import TraceRequest


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_poisson_rate_and_cv(seed: int) -> None:
    times = poisson_arrivals(20.0, duration_s=500.0, seed=seed)
    n = len(times)
    # 10,000 expected; Poisson sd = 100 -> 5 sd tolerance.
    assert abs(n - 10_000) < 500
    assert all(0.0 <= t < 500.0 for t in times)
    assert times == sorted(times)
    assert abs(interarrival_cv(times) - 1.0) < 0.05


@pytest.mark.parametrize(("cv", "tol"), [(0.5, 0.03), (2.0, 0.2), (4.0, 0.6)])
def test_gamma_rate_and_cv(cv: float, tol: float) -> None:
    times = gamma_arrivals(10.0, cv, n=40_000, seed=3)
    assert len(times) == 40_000
    rate = len(times) / times[-1]
    assert abs(rate - 10.0) / 10.0 < 0.05 * max(1.0, cv)
    assert abs(interarrival_cv(times) - cv) < tol


def test_seed_determinism_and_difference() -> None:
    assert gamma_arrivals(5.0, 2.0, n=100, seed=1) == gamma_arrivals(5.0, 2.0, n=100, seed=1)
    assert gamma_arrivals(5.0, 2.0, n=100, seed=1) != gamma_arrivals(5.0, 2.0, n=100, seed=2)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        poisson_arrivals(0.0, n=3)
    with pytest.raises(ValueError):
        poisson_arrivals(1.0)  # neither n nor duration
    with pytest.raises(ValueError):
        gamma_arrivals(1.0, 0.0, n=3)


def test_power_law_shares_by_hand() -> None:
    s = power_law_shares(3, 1.0)
    w = [1.0, 1 / 2, 1 / 3]
    assert s == pytest.approx([x / sum(w) for x in w])
    assert power_law_shares(4, 0.0) == pytest.approx([0.25] * 4)
    s9 = power_law_shares(9, 2.1)
    assert math.isclose(sum(s9), 1.0) and all(a >= b for a, b in itertools.pairwise(s9))


def test_scale_trace() -> None:
    tr = [TraceRequest(0.0, 5, 6), TraceRequest(4.0, 7, 8)]
    assert scale_trace(tr, 2.0) == [TraceRequest(0.0, 5, 6), TraceRequest(2.0, 7, 8)]


def _bursty_trace(n: int = 20_000) -> list[TraceRequest]:
    times = gamma_arrivals(10.0, 3.0, n=n, seed=11)
    return [TraceRequest(t, 100, 10) for t in times]


def test_split_by_shares_partitions_trace() -> None:
    trace = _bursty_trace()
    shares = power_law_shares(4, 1.0)
    streams = split_by_shares(trace, shares, seed=5)
    assert sum(len(s) for s in streams) == len(trace)
    for s, p in zip(streams, shares, strict=True):
        assert abs(len(s) / len(trace) - p) < 0.02
        assert [r.arrival_s for r in s] == sorted(r.arrival_s for r in s)
        assert interarrival_cv([r.arrival_s for r in s]) > 1.2  # still bursty


def test_split_by_slices_keeps_rate_and_burstiness() -> None:
    trace = _bursty_trace()
    rates = [4.0, 1.0, 0.5]
    streams = split_by_slices(trace, rates, duration_s=3000.0)
    for s, rate in zip(streams, rates, strict=True):
        ts = [r.arrival_s for r in s]
        assert ts == sorted(ts) and all(0 <= t < 3000.0 for t in ts)
        assert abs(len(ts) / 3000.0 - rate) / rate < 0.15
        assert interarrival_cv(ts) > 2.0


def test_attach_lengths() -> None:
    reqs = attach_lengths([0.0, 1.0, 2.0], [(3, 4)], seed=0)
    assert reqs == [TraceRequest(t, 3, 4) for t in (0.0, 1.0, 2.0)]
