"""FineServe schemes step each co-located model in its own engine lane."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.sim.conftest import TINY, TINY_Q, A, B, C, D, E, F, tiny_model

from fineserve.costmodel.base import InstanceKey
from fineserve.costmodel.fit import StepCoeffs
from fineserve.costmodel.table import TableCostModel
from fineserve.sim.catalog import SimModel
from fineserve.sim.loop import ClusterSim, SimRequest
from fineserve.sim.placement import PlacedInstance, Placement
from fineserve.sim.schemes import SCHEMES, get_scheme


def prefill_s(p: int) -> float:
    return A + B * p + C * p * (p + 1) / 2


def two_models(scheme: str, table, gpu) -> ClusterSim:
    models = [tiny_model(), SimModel("m1", TINY_Q, 1.0, ttft_slo_s=1.0)]
    placement = Placement(tuple(PlacedInstance(m.name, (0,)) for m in models), 1)
    return ClusterSim(models, placement, get_scheme(scheme), table, table.interference, gpu, True)


@pytest.mark.parametrize("scheme", ["fineserve", "fineserve_plus"])
def test_fineserve_schemes_use_one_lane_per_model(scheme: str, table, gpu) -> None:
    assert SCHEMES[scheme].lanes
    sim = two_models(scheme, table, gpu)
    (eng,) = sim.engines  # one shared engine (one arena) ...
    assert {lane.models for lane in eng.lanes} == {frozenset({"m0"}), frozenset({"m1"})}


def test_a_long_prefill_does_not_hold_back_another_models_decode(table, gpu) -> None:
    """m1's decode steps run while m0's long prefill is in flight (lanes), slowed only by
    the fitted interference; without lanes each would wait for the joint step to end."""
    sim = two_models("fineserve", table, gpu)
    reqs = [SimRequest("long", "m0", 0.0, 2000, 1), SimRequest("short", "m1", 0.0, 10, 4)]
    recs = sim.run(reqs).records
    long_end = recs["long"].finish_s
    short = recs["short"]
    assert short.finish_s < long_end  # every token of `short` came while `long` prefilled
    assert len(short.token_times_s) == 4
    solo = prefill_s(10) + 3 * (D + E + F * 12)
    worst = table.interference.colocated_slowdown(1.0, 2)  # both prefilling
    assert solo < short.finish_s <= solo * worst + 1e-12
    assert long_end > prefill_s(2000)  # it was slowed by the concurrent lane


def test_a_request_goes_to_the_replica_with_the_fewest_of_its_own_model(table, gpu) -> None:
    """m0 has a replica beside m1 (GPU 0) and one alone (GPU 1): with 3 m1 requests on GPU 0
    the second m0 request still goes there (0 of m0 vs 1), the third to GPU 1 (a tie on m0,
    fewer in all) — as the gateway routes (`Gateway.route`)."""
    models = [tiny_model(), SimModel("m1", TINY_Q, 1.0, ttft_slo_s=1.0)]
    placement = Placement(
        (PlacedInstance("m0", (0,)), PlacedInstance("m1", (0,)), PlacedInstance("m0", (1,))), 2
    )
    sim = ClusterSim(models, placement, get_scheme("fineserve"), table, table.interference, gpu)
    reqs = [SimRequest(f"b{k}", "m1", 0.0, 10, 4) for k in range(3)]
    reqs += [SimRequest(f"a{k}", "m0", 0.0, 10, 4) for k in range(3)]
    sim.run(reqs, horizon_s=0.0)
    where = {rid: min(eng.gpus) for rid, eng in sim._engine_of.items() if rid.startswith("a")}
    assert where == {"a0": 1, "a1": 0, "a2": 1}


@pytest.mark.parametrize(("scheme", "seen"), [("fineserve_plus", 1), ("fineserve", 0)])
def test_an_interference_aware_engine_sees_other_engines_steps_on_its_gpus(
    scheme: str, seen: int, table, gpu
) -> None:
    """m1 (TP=2 on GPUs 0-1) is prefilling when m0's request reaches its engine on GPU 0:
    that step of another engine is counted into m0's planning (`neighbours_in_flight`) by
    the interference-aware scheme only; m2 on GPU 2 shares no GPU with it."""
    tp2 = replace(TINY, tp=2)
    coeffs = StepCoeffs(prefill=(A, B, C, 0.0, 0.0), decode=(D, E, F))
    table = TableCostModel(
        {InstanceKey("tiny", "fp16", t): coeffs for t in (1, 2)}, table.interference
    )
    models = [tiny_model(), SimModel("m1", tp2, 1.0, ttft_slo_s=1.0), tiny_model("m2")]
    placement = Placement(
        (PlacedInstance("m1", (0, 1)), PlacedInstance("m0", (0,)), PlacedInstance("m2", (2,))), 3
    )
    sim = ClusterSim(models, placement, get_scheme(scheme), table, table.interference, gpu)
    reqs = [SimRequest("long", "m1", 0.0, 2000, 1)]
    reqs += [SimRequest("a", "m0", 0.0, 10, 1), SimRequest("c", "m2", 0.0, 10, 1)]
    sim.run(reqs, horizon_s=0.0)
    counted = {eng.models[0]: eng.engine.scheduler.neighbours_in_flight for eng in sim.engines}
    assert counted == {"m0": seen, "m1": 0, "m2": 0}
