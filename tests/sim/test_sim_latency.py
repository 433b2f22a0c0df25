"""Single-GPU simulations whose latencies are computed by hand from the cost table."""

from __future__ import annotations

import pytest
from tests.sim.conftest import TINY_Q, A, B, C, D, E, F, tiny_model

from fineserve.costmodel.table import TableCostModel
from fineserve.sim.catalog import GpuSpec, SimModel
from fineserve.sim.device import Activity, GpuGroup
from fineserve.sim.loop import ClusterSim, SimRequest
from fineserve.sim.placement import PlacedInstance, Placement
from fineserve.sim.schemes import get_scheme


def prefill_s(p: int) -> float:
    return A + B * p + C * p * (p + 1) / 2


def decode_s(contexts: list[int]) -> float:
    return D + E * len(contexts) + F * sum(contexts)


def one_gpu(models: list[SimModel], scheme: str, table: TableCostModel, gpu: GpuSpec):
    placement = Placement(tuple(PlacedInstance(m.name, (0,)) for m in models), 1)
    return ClusterSim(models, placement, get_scheme(scheme), table, table.interference, gpu, True)


@pytest.mark.parametrize("scheme", ["static", "fineserve"])
def test_one_request_matches_hand_calculation(scheme: str, table, gpu) -> None:
    p, o, t0 = 100, 5, 0.25
    sim = one_gpu([tiny_model()], scheme, table, gpu)
    rec = sim.run([SimRequest("r", "m0", t0, p, o)]).records["r"]
    first = t0 + prefill_s(p)
    assert rec.first_token_s == pytest.approx(first, rel=1e-12)
    times, t = [first], first
    for k in range(1, o):  # decode k feeds the token at position p + k - 1
        t += decode_s([p + k - 1])
        times.append(t)
    assert rec.token_times_s == pytest.approx(times, rel=1e-12)
    assert rec.finish_s == pytest.approx(times[-1], rel=1e-12)
    assert rec.output_tokens == o and rec.error is None


def test_second_arrival_joins_the_next_step(table, gpu) -> None:
    """`a` starts alone at once; `b` (same instant) runs its prefill beside `a`'s decode."""
    sim = one_gpu([tiny_model()], "fineserve", table, gpu)
    reqs = [SimRequest("a", "m0", 0.0, 10, 3), SimRequest("b", "m0", 0.0, 20, 3)]
    recs = sim.run(reqs).records
    t1 = prefill_s(10)
    t2 = t1 + max(A, D) + B * 20 + C * 20 * 21 / 2 + E + F * 10  # mixed step
    t3 = t2 + decode_s([11, 20])
    t4 = t3 + decode_s([21])
    assert recs["a"].token_times_s == pytest.approx([t1, t2, t3])
    assert recs["b"].token_times_s == pytest.approx([t2, t3, t4])


def test_colocated_models_slow_each_other_by_the_fitted_factor(table, gpu) -> None:
    """Two models' prefills start together: each runs at 1 / colocated_slowdown(1.0, 2)."""
    other = SimModel("m1", TINY_Q, 1.0, ttft_slo_s=1.0)
    sim = one_gpu([tiny_model(), other], "static", table, gpu)  # one engine per model
    reqs = [SimRequest("a", "m0", 0.0, 50, 1), SimRequest("b", "m1", 0.0, 50, 1)]
    recs = sim.run(reqs).records
    slow = table.interference.colocated_slowdown(1.0, 2)
    assert recs["a"].finish_s == pytest.approx(prefill_s(50) * slow)
    assert recs["b"].finish_s == pytest.approx(prefill_s(50) * slow)


def test_group_rates_follow_concurrency(table) -> None:
    group = GpuGroup((0,), table.interference)
    a, b = Activity(1.0, 0.0, "a"), Activity(1.0, 1.0, "b")
    group.add(a)
    group.add(b)
    group.rerate()
    assert a.rate == pytest.approx(1 / table.interference.colocated_slowdown(0.0, 2))
    assert b.rate == pytest.approx(1 / table.interference.colocated_slowdown(1.0, 2))
    group.advance(0.5)
    assert a.remaining == pytest.approx(1.0 - 0.5 * a.rate)
    assert group.next_finish() == pytest.approx(0.5 + a.remaining / a.rate)
