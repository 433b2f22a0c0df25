"""Deadlines: SAAB's early rejection and hold-back, Prism's cumulative check, TPOT bound."""

from __future__ import annotations

from types import ModuleType

import pytest

from fineserve.scheduler.local import POLICIES, SchedulerConfig, make_policy
from fineserve.scheduler.local.config import BEST_EFFORT
from fineserve.scheduler.local.policies import SlackPolicy

# With the test cost model a chunk of n prompt tokens alone takes 5 ms + 0.1 ms * n.


def test_registry_has_the_published_policies_and_ours() -> None:
    assert {"fcfs", "saab", "prism", "slack"} <= set(POLICIES)
    assert make_policy("saab").name == "saab"
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        make_policy("nope")


def test_slack_plus_is_the_policy_the_simulated_fineserve_plus_runs() -> None:
    from fineserve.sim.schemes import get_scheme

    plus = make_policy("slack_plus")
    sim = get_scheme("fineserve_plus").make_policy()
    assert isinstance(plus, SlackPolicy) and isinstance(sim, SlackPolicy)
    options = ("tpot_budget", "fewest_misses", "lookahead", "uses_forecast")
    assert [getattr(plus, o) for o in options] == [getattr(sim, o) for o in options]
    assert plus.lookahead and plus.fewest_misses
    assert not make_policy("slack").lookahead


@pytest.mark.parametrize("policy", ["saab", "prism", "slack"])
def test_request_that_cannot_meet_its_deadline_alone_is_rejected(
    h: ModuleType, policy: str
) -> None:
    engine = h.make_engine([h.spec("a", ttft=0.02)], policy=policy)
    engine.add_request("ok", "a", [1] * 100, max_tokens=2)  # 15 ms alone
    engine.add_request("bad", "a", [1] * 400, max_tokens=2)  # 45 ms alone in 64-token chunks
    outs = h.collect(engine.run_until_idle())
    assert outs["bad"] == [outs["bad"][0]]
    assert outs["bad"][0].finish_reason == "rejected" and outs["bad"][0].error
    assert outs["ok"][-1].finish_reason == "length"
    assert engine.scheduler.stats.rejected == 1
    h.assert_no_pages(engine)


def test_fcfs_never_rejects(h: ModuleType) -> None:
    engine = h.make_engine([h.spec("a", ttft=0.02)], policy="fcfs")
    engine.add_request("bad", "a", [1] * 400, max_tokens=2)
    outs = h.collect(engine.run_until_idle())
    assert outs["bad"][-1].finish_reason == "length"


def test_best_effort_mode_serves_unmeetable_requests_after_the_others(h: ModuleType) -> None:
    config = SchedulerConfig(token_budget=64, unmeetable=BEST_EFFORT)
    engine = h.make_engine([h.spec("a", ttft=0.05)], policy="saab", config=config)
    engine.add_request("late", "a", [1] * 600, max_tokens=1)
    engine.add_request("ok", "a", [1] * 50, max_tokens=1)
    order = [o.request_id for o in engine.run_until_idle() if o.finished]
    assert order == ["ok", "late"]
    assert engine.scheduler.stats.rejected == 0


def test_saab_holds_back_the_longest_prompt_to_meet_the_earliest_deadline(
    h: ModuleType,
) -> None:
    engine = h.make_engine([h.spec("a", ttft=0.011)], policy="saab")
    engine.add_request("short", "a", [1] * 20, max_tokens=1, arrival_s=0.0)  # alone 7 ms
    engine.add_request("long", "a", [1] * 60, max_tokens=1, arrival_s=0.001)  # alone 11 ms
    plan = engine.begin_step(0.0)
    # together (budget 64: chunks of 20 and 44): 5 ms + 6.4 ms > 11 ms: "long" waits
    assert plan.batches[0].request_ids == ["short"]


def test_fcfs_batches_both_and_misses_the_deadline(h: ModuleType) -> None:
    engine = h.make_engine([h.spec("a", ttft=0.0125)], policy="fcfs")
    engine.add_request("short", "a", [1] * 20, max_tokens=1, arrival_s=0.0)
    engine.add_request("long", "a", [1] * 60, max_tokens=1, arrival_s=0.001)
    plan = engine.begin_step(0.0)
    assert plan.batches[0].request_ids == ["short", "long"]


def test_prism_rejects_requests_whose_queue_makes_them_late(h: ModuleType) -> None:
    engine = h.make_engine([h.spec("a", ttft=0.02)], policy="prism")
    for i in range(4):  # each 11 ms alone: the second is predicted at 22 ms > 20 ms
        engine.add_request(f"r{i}", "a", [1] * 60, max_tokens=1, arrival_s=0.0)
    outs = engine.run_until_idle()
    reasons = {o.request_id: o.finish_reason for o in outs if o.finished}
    assert reasons == {"r0": "length", "r1": "rejected", "r2": "rejected", "r3": "rejected"}


def test_tpot_slo_bounds_the_decode_batch(h: ModuleType) -> None:
    # decode step of n sequences: 5 ms + 0.1 ms * n <= 6 ms  ->  n <= 10
    engine = h.make_engine([h.spec("a", tpot=0.006)], policy="saab")
    for i in range(16):
        engine.add_request(f"r{i}", "a", [1, 2], max_tokens=30)
    outputs = engine.step()  # all 16 prefills in one step (32 tokens)
    plan = engine.begin_step(engine.clock.now())
    assert len(plan.batches[0]) == 10 and plan.batches[0].num_prefills == 0
    outputs += engine.finish_step(engine.executor.execute(plan), engine.clock.now())
    outs = h.collect(outputs + engine.run_until_idle())
    assert all(len(h.tokens_of(v)) == 30 for v in outs.values())  # nobody starves
    h.assert_no_pages(engine)


def test_slack_policy_cuts_prefill_chunks_to_keep_tpot(h: ModuleType) -> None:
    specs = [h.spec("a", tpot=0.012), h.spec("b")]
    config = SchedulerConfig(token_budget=256)
    engine = h.make_engine(specs, policy="slack", config=config)
    engine.scheduler.policy = SlackPolicy(tpot_budget=True)
    engine.add_request("d", "a", [1, 2], max_tokens=30)
    engine.step()
    engine.add_request("p", "b", [1] * 500, max_tokens=1)
    plan = engine.begin_step(engine.clock.now())
    # decode 5.1 ms + prefill (5 ms + 0.1 ms * n) <= 12 ms  ->  n <= 19, floor 32 tokens
    prefill = next(b for b in plan.batches if b.model == "b")
    assert [len(t) for t in prefill.token_ids] == [32]


def test_models_are_ordered_by_slack(h: ModuleType) -> None:
    specs = [h.spec("loose", ttft=10.0), h.spec("tight", ttft=0.1)]
    engine = h.make_engine(specs, policy="saab", config=SchedulerConfig(token_budget=64))
    engine.add_request("l", "loose", [1] * 64, max_tokens=1, arrival_s=0.0)
    engine.add_request("t", "tight", [1] * 64, max_tokens=1, arrival_s=0.01)
    plan = engine.begin_step(0.01)
    assert [b.model for b in plan.batches] == ["tight"]
