"""Placement: feasibility, memory limits, TP choice, replicas, infeasible errors, greedy vs MILP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fineserve.cli import main
from fineserve.costmodel import make_cost_model
from fineserve.costmodel.roofline import KNOWN_MODELS
from fineserve.scheduler.placement import (
    POLICIES,
    ClusterSpec,
    InfeasibleError,
    ModelDemand,
    PlacementProblem,
    kv_formats_for,
    place,
    replan,
    weight_bytes_for,
)
from fineserve.scheduler.placement.fileformat import (
    load_placement_file,
    parse_placement_document,
    placement_document,
)

GIB = 1 << 30
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "paper-16xh100.yaml"


@pytest.fixture(scope="module")
def cost():
    return make_cost_model("h100")


def demand(name, arch="llama-3.1-8b", q="fp16", rate=1.0, tps=(1, 2, 4), **kw) -> ModelDemand:
    spec = KNOWN_MODELS[arch]
    kw.setdefault("ttft_slo_s", 1.0)
    kw.setdefault("tpot_slo_s", 0.1)
    return ModelDemand(
        name, arch, q, weight_bytes_for(spec, q), kv_formats_for(spec, q, tps), rate,
        tp_options=tps, **kw,
    )  # fmt: skip


def check_invariants(problem: PlacementProblem, placement) -> None:
    for inst in placement.instances:
        assert len(inst.gpus) == inst.tp
        assert len({g[: g.index("g")] for g in inst.gpus}) == 1  # one node
    for m in problem.models:
        mine = placement.instances_of(m.name)
        assert sorted(i.replica for i in mine) == list(range(len(mine)))
        assert len({i.gpus for i in mine}) == len(mine)
    for usage in placement.gpus.values():
        assert usage.used_bytes <= usage.memory_bytes
    assert 0.0 <= placement.predicted.slo_attainment <= 1.0


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_places_a_small_mix(cost, policy):
    models = (demand("a"), demand("b", q="awq"), demand("c", q="fp8", rate=2.0))
    problem = PlacementProblem(models, ClusterSpec(1, 4), cost)
    placement = place(problem, policy)
    check_invariants(problem, placement)
    assert not placement.unplaced
    assert placement.predicted.slo_attainment > 0.95
    doc = placement.to_json()
    assert set(doc) == {"policy", "instances", "gpus", "predicted"}
    assert set(doc["predicted"]) == {"slo_attainment"}


def test_70b_needs_tensor_parallelism(cost):
    problem = PlacementProblem(
        (demand("big", "llama-3.1-70b", tps=(1, 2, 4, 8)),), ClusterSpec(1, 8), cost
    )
    placement = place(problem, "fineserve")
    (inst,) = placement.instances
    assert inst.tp >= 2  # 141 GB of weights cannot sit on one 80 GB GPU
    check_invariants(problem, placement)


def test_model_larger_than_any_group_is_infeasible(cost):
    problem = PlacementProblem((demand("big", "llama-3.1-70b", tps=(1,)),), ClusterSpec(1, 4), cost)
    with pytest.raises(InfeasibleError, match=r"needs .* GiB per GPU"):
        place(problem, "fineserve")


def test_rate_beyond_the_cluster_is_infeasible(cost):
    problem = PlacementProblem((demand("hot", rate=5000.0, tps=(1,)),), ClusterSpec(1, 2), cost)
    with pytest.raises(InfeasibleError, match="req/s within SLO"):
        place(problem, "fineserve")


def test_high_rate_gets_replicas(cost):
    problem = PlacementProblem((demand("hot", rate=40.0, tps=(1,)),), ClusterSpec(1, 4), cost)
    placement = place(problem, "fineserve")
    assert len(placement.instances) >= 2
    assert placement.predicted.per_model["hot"] > 0.9


def test_memory_limits_split_models_across_gpus(cost):
    # Three FP16 8B models (~16 GB each) on 40 GB GPUs: at most two per GPU.
    models = tuple(demand(f"m{k}", rate=0.5, tps=(1,)) for k in range(3))
    cluster = ClusterSpec(1, 2, gpu_memory_bytes=40 * GIB, reserve_bytes=2 * GIB)
    placement = place(PlacementProblem(models, cluster, cost), "fineserve")
    assert not placement.unplaced
    per_gpu = [sum(1 for i in placement.instances if g in i.gpus) for g in cluster.gpu_ids()]
    assert sorted(per_gpu) == [1, 2]


def test_greedy_matches_milp_on_a_hand_solved_instance(cost):
    # Two GPUs of 40 GB; two FP16 8B models (16 GB each) and one 8B AWQ model (6 GB).
    # Any optimum places all three (one GPU gets two): goodput = total rate.
    models = (
        demand("a", rate=1.0, tps=(1,)),
        demand("b", rate=1.0, tps=(1,)),
        demand("c", q="awq", rate=1.0, tps=(1,)),
    )
    cluster = ClusterSpec(1, 2, gpu_memory_bytes=40 * GIB, reserve_bytes=2 * GIB)
    problem = PlacementProblem(models, cluster, cost)
    greedy, exact = place(problem, "fineserve"), place(problem, "milp")
    assert exact.predicted.goodput == pytest.approx(3.0, rel=0.02)
    assert greedy.predicted.goodput >= 0.95 * exact.predicted.goodput


def test_one_per_gpu_does_not_share(cost):
    models = (demand("a", tps=(1,)), demand("b", tps=(1,)), demand("c", tps=(1,)))
    placement = place(PlacementProblem(models, ClusterSpec(1, 2), cost), "one_per_gpu")
    assert len(placement.unplaced) == 1
    assert len({i.gpus for i in placement.instances}) == len(placement.instances)


def test_replan_restores_attainment_after_drift(cost):
    models = tuple(demand(f"m{k}", q="qoq", rate=2.0, tps=(1,)) for k in range(3))
    problem = PlacementProblem(models, ClusterSpec(1, 4), cost)
    current = place(problem, "fineserve")
    proposal = replan(problem, current, {"m0": 30.0, "m1": 30.0})
    assert proposal.after.predicted.slo_attainment >= proposal.before.predicted.slo_attainment
    for move in proposal.moves:
        assert move.kind in {"add_replica", "move", "remove_replica"}
        assert move.weight_bytes_to_load >= 0 and move.requests_to_drain >= 0
    assert replan(problem, current, {}).moves == ()


def test_placement_file_round_trip(cost, tmp_path):
    problem = PlacementProblem((demand("a"), demand("b", q="fp8")), ClusterSpec(1, 2), cost)
    placement = place(problem, "fineserve")
    doc = placement_document(problem, placement)
    parsed = parse_placement_document(json.loads(json.dumps(doc)))
    assert parsed.instances == tuple(placement.instances)
    assert set(parsed.models) == {"a", "b"}


def test_plan_cli_example(tmp_path, capsys):
    out = tmp_path / "placement.yaml"
    assert main(["plan", "--config", str(EXAMPLE), "--json", "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["policy"] == "fineserve" and len(doc["gpus"]) == 16
    assert {i["model"] for i in doc["instances"]} >= {"llama-3.1-70b-fp16", "qwen3-32b-fp16"}
    assert all(len(i["gpus"]) == 4 for i in doc["instances"] if i["model"] == "llama-3.1-70b-fp16")
    parsed = load_placement_file(out)
    assert len(parsed.instances) == len(doc["instances"])


def test_plan_cli_infeasible_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "cluster: {nodes: 1, gpus_per_node: 1}\n"
        "models:\n  - {name: big, arch: llama-3.1-70b, qformat: fp16, rate: 1, tp: 1}\n"
    )
    assert main(["plan", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "infeasible" in err and "big" in err and "Traceback" not in err


def test_plan_cli_bad_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  - {name: x, arch: nope, rate: 1}\n")
    assert main(["plan", "--config", str(cfg)]) == 2
    assert "arch" in capsys.readouterr().err


def overloaded(cost) -> PlacementProblem:
    """Four GPUs, demand well above their capacity, memory for one instance of each model."""
    models = (
        demand("hot", rate=60.0, tps=(1,)),
        demand("warm", q="fp8", rate=30.0, tps=(1,)),
        *(demand(f"small-{i}", q="awq", rate=4.0, tps=(1,)) for i in range(6)),
    )
    return PlacementProblem(models, ClusterSpec(1, 4), cost)


def test_overload_places_every_model_when_memory_allows(cost):
    problem = overloaded(cost)
    placement = place(problem, "fineserve")
    check_invariants(problem, placement)
    assert placement.unplaced == ()
    assert all(placement.instances_of(m.name) for m in problem.models)
    assert placement.predicted.slo_attainment > 0.2  # degrades, does not collapse


def test_overload_no_replica_beyond_need(cost):
    from fineserve.scheduler.placement import Sizer
    from fineserve.scheduler.placement.state import fallback_options

    problem = overloaded(cost)
    placement = place(problem, "fineserve")
    sizer = Sizer(problem)
    for m in problem.models:
        need = max(o.replicas for o in fallback_options(sizer, sizer.options(m)))
        assert len(placement.instances_of(m.name)) <= need, m.name


def test_predictor_counts_overload_once(cost):
    from fineserve.scheduler.placement import InstancePlacement, predict

    m = demand("hot", rate=30.0, tps=(1,))
    problem = PlacementProblem((m,), ClusterSpec(1, 1), cost)
    pred, _ = predict(problem, [InstancePlacement("hot", 1, 0, ("n0g0",))])
    from fineserve.scheduler.placement import Sizer

    offered = m.rate * Sizer(problem).work(m, 1)
    assert offered > 1.0  # overloaded: counted once, as the admitted share
    served = problem.options.util_cap / offered
    assert pred.slo_attainment == pytest.approx(served, rel=0.35)


def test_muxserve_places_every_model_once_hottest_apart(cost):
    """MuxServe colocates every LLM once (no replicas, none refused while memory allows), the
    largest computation requirement first, each on the least-loaded mesh."""
    problem = overloaded(cost)
    placement = place(problem, "muxserve")
    check_invariants(problem, placement)
    assert placement.unplaced == ()
    assert all(len(placement.instances_of(m.name)) == 1 for m in problem.models)
    (hot,) = placement.instances_of("hot")
    (warm,) = placement.instances_of("warm")
    assert hot.gpus != warm.gpus  # the two busiest models start on separate empty GPUs
