"""Simulation-verified placement: the best candidate of a planning simulation is kept."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest

from fineserve.costmodel.registry import make_cost_model
from fineserve.costmodel.table import load_fitted_interference
from fineserve.sim.catalog import GpuSpec, SimModel, paper_models, slo_scaled
from fineserve.sim.experiments import (
    Candidate,
    Planning,
    candidate_placements,
    placement_for,
    verified_placement,
)
from fineserve.sim.placement import PlacedInstance, Placement
from fineserve.sim.schemes import get_scheme
from fineserve.sim.verify import Trial, choose_placement, refine_choice
from fineserve.sim.workload import assign_rates, sharegpt_lengths, with_slos


def one(model: str, gpu: int) -> Placement:
    return Placement((PlacedInstance(model, (gpu,)),), 2)


def test_the_highest_attainment_wins_and_ties_keep_the_earlier() -> None:
    cands = {"a": one("m", 0), "b": one("m", 1), "c": one("n", 0)}
    score = {cands["a"]: 0.5, cands["b"]: 0.8, cands["c"]: 0.8}
    v = choose_placement(cands, lambda p: Trial(score[p], 10.0, 0.5))
    assert v.chosen == "b" and v.candidate == cands["b"]
    assert dict(v.scores) == {"a": 0.5, "b": 0.8, "c": 0.8}
    assert (v.sim_s, v.wall_s) == (30.0, 1.5)  # every trial is counted


def test_a_refinement_is_kept_only_when_it_scores_higher() -> None:
    cands = {"a": one("m", 0), "b": one("m", 1)}
    score = {cands["a"]: 0.5, cands["b"]: 0.8, one("n", 0): 0.9, one("n", 1): 0.8}
    v = choose_placement(cands, lambda p: Trial(score[p], 10.0, 0.5))
    better = refine_choice(v, {"r": one("n", 0)}, lambda p: Trial(score[p], 10.0, 0.5))
    assert (better.chosen, better.candidate) == ("r", one("n", 0))
    assert dict(better.scores) == {"a": 0.5, "b": 0.8, "r": 0.9}
    assert (better.sim_s, better.wall_s) == (30.0, 1.5)
    tie = refine_choice(v, {"r": one("n", 1)}, lambda p: Trial(score[p], 10.0, 0.5))
    assert (tie.chosen, tie.candidate) == ("b", cands["b"])  # a tie keeps the first choice
    assert refine_choice(v, {}, lambda p: Trial(0.0, 0.0, 0.0)) is v


def test_no_candidates_is_an_error() -> None:
    with pytest.raises(ValueError, match="no candidate"):
        choose_placement({}, lambda p: Trial(1.0, 0.0, 0.0))


def test_verified_placement_is_the_best_candidate_of_its_planning_run() -> None:
    cost = make_cost_model("h100")
    lengths = sharegpt_lengths(None, n=2000)
    models = with_slos(assign_rates(paper_models(1), 30.0, 0.9, 0), cost, 5.0, 512)
    spec = replace(get_scheme("fineserve_plus"), verify_s=5.0)
    plan = Planning(cost, load_fitted_interference(), lengths, (512, 256), seed=0, drain_s=10.0)
    v = verified_placement(spec, models, 8, GpuSpec(), plan)
    candidates = candidate_placements(spec, models, 8, GpuSpec(), cost, (512, 256))
    assert set(v.scores) == set(candidates)
    assert v.scores[v.chosen] == max(v.scores.values())
    assert v.candidate == candidates[v.chosen]
    assert 0.0 < min(v.scores.values()) <= 1.0 and v.sim_s > 0.0
    again = verified_placement(spec, models, 8, GpuSpec(), plan)
    assert (again.chosen, dict(again.scores)) == (v.chosen, dict(v.scores))


def test_the_winner_is_refined_by_the_refine_policy_at_its_margins() -> None:
    cost = make_cost_model("h100")
    lengths = sharegpt_lengths(None, n=2000)
    models = with_slos(assign_rates(paper_models(1), 30.0, 0.9, 0), cost, 5.0, 512)
    plan = Planning(cost, load_fitted_interference(), lengths, (512, 256), seed=0, drain_s=10.0)
    base = replace(get_scheme("fineserve_plus"), verify_s=5.0, placement_candidates=("fineserve",),
                   placement_slo_margins=(), served_slo_margins=(0.5,))  # fmt: skip
    plain = verified_placement(replace(base, refine_policy=""), models, 8, GpuSpec(), plan)
    # prism's placement differs from FineServe's: the refinement is run, at the winner's margins
    spec = replace(base, refine_policy="prism")
    v = verified_placement(spec, models, 8, GpuSpec(), plan)
    won = plain.chosen
    refined = "prism" if won == "fineserve" else "prism@0.5:served"
    assert set(v.scores) == {*plain.scores, refined}
    assert {k: v.scores[k] for k in plain.scores} == dict(plain.scores)
    assert v.chosen in (won, refined) and v.scores[v.chosen] == max(v.scores.values())
    assert v.sim_s > plain.sim_s
    # a refine policy that places alike is not run again
    same = verified_placement(replace(base, refine_policy="fineserve"), models, 8, GpuSpec(), plan)
    assert dict(same.scores) == dict(plain.scores) and same.sim_s == plain.sim_s


def test_every_scheme_lists_known_placement_policies() -> None:
    from fineserve.scheduler.placement.registry import POLICIES

    for name in ("static", "muxserve", "prism", "fineserve", "fineserve_plus"):
        spec = get_scheme(name)
        assert set(spec.placement_candidates) <= set(POLICIES)
        assert not spec.refine_policy or spec.refine_policy in POLICIES
    assert get_scheme("fineserve_plus").placement_candidates[0] == "fineserve"


def test_margin_candidates_are_the_own_policy_planned_for_scaled_slos() -> None:
    cost = make_cost_model("h100")
    models = with_slos(assign_rates(paper_models(1), 30.0, 0.9, 0), cost, 5.0, 512)
    spec = replace(get_scheme("fineserve_plus"), placement_slo_margins=(0.5,),
                   served_slo_margins=(0.5, 0.7))  # fmt: skip
    candidates = candidate_placements(spec, models, 8, GpuSpec(), cost, (512, 256))
    own = spec.placement_candidates[0]
    assert list(candidates) == [*spec.placement_candidates, f"{own}@0.5", f"{own}@0.5:served",
                                f"{own}@0.7:served"]  # fmt: skip
    plan = partial(placement_for, spec, num_gpus=8, gpu=GpuSpec(), cost=cost,
                   mean_lengths=(512, 256), policy=own)  # fmt: skip
    tight = plan([slo_scaled(m, 0.5) for m in models])
    assert candidates[f"{own}@0.5"] == Candidate(tight, 1.0)
    assert candidates[f"{own}@0.5:served"] == Candidate(tight, 0.5)
    assert candidates[f"{own}@0.7:served"] == Candidate(
        plan([slo_scaled(m, 0.7) for m in models]), 0.7
    )
    assert candidates[own] == Candidate(plan(models), 1.0)


def test_slo_scaled_scales_the_slos_a_model_has() -> None:
    name, mtype = paper_models(1)[0]
    m = SimModel(name, mtype, rate=3.0, ttft_slo_s=2.0)
    half = slo_scaled(m, 0.5)
    assert (half.ttft_slo_s, half.tpot_slo_s) == (1.0, None)
    assert slo_scaled(m.with_slo(2.0, 0.1), 0.5).tpot_slo_s == pytest.approx(0.05)
    assert (half.name, half.rate) == (m.name, m.rate)
