"""The `drift` experiment survives models whose rate no placement option can serve."""

from __future__ import annotations

from fineserve.costmodel.registry import make_cost_model
from fineserve.sim.catalog import GpuSpec, SimModel, paper_models
from fineserve.sim.drift import DriftConfig, run_drift
from fineserve.sim.placement import feasible_problem, policy_placement, policy_problem
from fineserve.sim.workload import with_slos


def _models(rate_70b: float) -> list[SimModel]:
    cost = make_cost_model("h100")
    cat = paper_models(1)
    models = [SimModel(n, t, rate_70b if "70b" in n else 1.0) for n, t in cat]
    return with_slos(models, cost, 5.0, 512)


def test_infeasible_rate_is_capped_not_raised() -> None:
    cost = make_cost_model("h100")
    models = _models(50.0)
    problem = policy_problem(models, 8, GpuSpec(), cost, 512, 256)
    capped, caps, dropped = feasible_problem(problem)
    assert "llama70b-fp16" in caps and 0.0 < caps["llama70b-fp16"] < 50.0
    assert capped.model("llama70b-fp16").rate == caps["llama70b-fp16"]
    assert not dropped
    placement, _ = policy_placement(models, 8, GpuSpec(), "fineserve", cost, 512, 256)
    assert any(i.model == "llama70b-fp16" for i in placement.instances)


def test_drift_with_an_infeasible_model_runs_end_to_end() -> None:
    cfg = DriftConfig(
        duration_s=20.0, replan_every_s=10.0, total_rate=40.0, num_gpus=8, copies_8b=1,
        drain_s=10.0,
    )  # fmt: skip
    doc = run_drift(cfg, None)
    assert "llama70b-fp16" in doc["capped_rates"]
    for mode in ("fixed", "replan"):
        run = doc["runs"][mode]
        assert 0.0 < run["slo_attainment"] < 1.0
        assert run["replan_errors"] == 0
