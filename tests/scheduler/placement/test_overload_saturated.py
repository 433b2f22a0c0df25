"""Overload phase 3 (`policies._saturated`): a model whose replicas each carry more than a
whole group gets replicas on the least-loaded groups, never on a heavy TP group's GPUs and
never beyond its option."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fineserve.costmodel import make_cost_model
from fineserve.costmodel.roofline import KNOWN_MODELS
from fineserve.scheduler.placement import ClusterSpec, ModelDemand, PlacementProblem, Sizer
from fineserve.scheduler.placement.policies import HEAVY_TP, SATURATED, _saturated
from fineserve.scheduler.placement.problem import kv_formats_for, weight_bytes_for
from fineserve.scheduler.placement.state import ClusterState

BIG = ("n0g0", "n0g1", "n0g2", "n0g3")


def _demand(name: str, arch: str, rate: float, tp: int) -> ModelDemand:
    spec = KNOWN_MODELS[arch]
    return ModelDemand(
        name, arch, "fp16", weight_bytes_for(spec, "fp16"), kv_formats_for(spec, "fp16", (tp,)),
        rate, ttft_slo_s=2.0, tpot_slo_s=0.1, tp_options=(tp,),
    )  # fmt: skip


@pytest.fixture(scope="module")
def setup() -> tuple[PlacementProblem, Sizer]:
    models = (
        _demand("hot", "llama-3.1-8b", 40.0, 1),
        _demand("big", "llama-3.1-70b", 8.0, 4),
    )
    problem = PlacementProblem(models, ClusterSpec(1, 8), make_cost_model("h100"))
    return problem, Sizer(problem)


def _state(problem: PlacementProblem, sizer: Sizer) -> tuple[ClusterState, dict]:
    chosen = {m.name: sizer.options(m)[0] for m in problem.models}
    state = ClusterState(problem, sizer)
    state.add(replace(chosen["big"], replicas=1), BIG, 0)
    state.add(replace(chosen["hot"], replicas=1), ("n0g4",), 0)
    return state, chosen


def test_saturated_model_gets_replicas_off_the_heavy_group(setup) -> None:
    problem, sizer = setup
    state, chosen = _state(problem, sizer)
    hot, big = sizer.model("hot"), sizer.model("big")
    assert hot.rate * sizer.work(hot, 1) > SATURATED  # one replica cannot carry it
    assert big.rate * sizer.work(big, 4) >= HEAVY_TP  # the 70B group counts as heavy
    assert chosen["hot"].replicas > 1
    _saturated(problem, sizer, state, chosen)
    groups = state.groups_of("hot")
    assert 1 < len(groups) <= chosen["hot"].replicas
    assert not any(set(g) & set(BIG) for g in groups)
    assert len(groups) == len(set(groups))  # one replica per group
    done = hot.rate / len(groups) * sizer.work(hot, 1) <= SATURATED
    assert done or len(groups) == min(chosen["hot"].replicas, 4)
    assert state.groups_of("big") == [BIG]  # not saturated: no replica added


def test_unsaturated_models_are_left_alone(setup) -> None:
    problem, sizer = setup
    state, chosen = _state(problem, sizer)
    light = {"hot": replace(chosen["hot"], replicas=1), "big": chosen["big"]}
    before = list(state.instances)
    _saturated(problem, sizer, state, light)  # option count already reached
    assert state.instances == before


def test_the_threshold_decides_whether_a_replica_is_added(setup) -> None:
    problem, sizer = setup
    hot = sizer.model("hot")
    load = hot.rate * sizer.work(hot, 1)  # the busy share its one replica carries
    added = {}
    for threshold in (0.99 * load, load, 1.5 * load):
        state, chosen = _state(problem, sizer)
        _saturated(problem, sizer, state, chosen, threshold)
        added[threshold] = len(state.groups_of("hot")) - 1
    assert added[0.99 * load] >= 1
    assert added[load] == 0 and added[1.5 * load] == 0  # saturated means above it
