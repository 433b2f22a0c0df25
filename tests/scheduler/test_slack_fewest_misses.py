"""`SlackPolicy(fewest_misses=True)`: Moore-Hodgson admission gives up the longest prompt so
more requests meet their TTFT deadline; off by default (the cumulative check as before)."""

from __future__ import annotations

from types import ModuleType

from fineserve.scheduler.local import SchedulerConfig
from fineserve.scheduler.local.policies import SlackPolicy

# With the test cost model a chunk of n prompt tokens alone takes 5 ms + 0.1 ms * n.


def _finish_reasons(
    h: ModuleType, fewest_misses: bool, ttft: float, prompts: dict[str, int]
) -> dict[str, str]:
    config = SchedulerConfig(token_budget=256)
    engine = h.make_engine([h.spec("a", ttft=ttft)], policy="slack", config=config)
    engine.scheduler.policy = SlackPolicy(fewest_misses=fewest_misses)
    for rid, n in prompts.items():
        engine.add_request(rid, "a", [1] * n, max_tokens=1, arrival_s=0.0)
    outs = engine.run_until_idle()
    h.assert_no_pages(engine)
    return {o.request_id: o.finish_reason for o in outs if o.finished}


SHARED = {"long": 150, "s1": 20, "s2": 20}  # alone 20 ms, 7 ms, 7 ms; together one 24 ms step
BLOCKING = {"long": 240, "s1": 60, "s2": 60, "s3": 60, "s4": 60}  # alone 29 ms, 11 ms each


def test_cumulative_check_counts_each_prefill_as_its_own_step(h: ModuleType) -> None:
    # earliest deadline first: long ends at 20 ms, s1 "at 27 ms" > 25 ms, and so s2
    assert _finish_reasons(h, False, 0.025, SHARED) == {
        "long": "length", "s1": "rejected", "s2": "rejected",
    }  # fmt: skip


def test_fewest_misses_sees_that_short_prompts_share_a_step(h: ModuleType) -> None:
    # 190 tokens fit one 256-token step (24 ms): all three meet 25 ms
    assert _finish_reasons(h, True, 0.025, SHARED) == {
        "long": "length", "s1": "length", "s2": "length",
    }  # fmt: skip


def test_fewest_misses_gives_up_the_longest_prompt_instead_of_the_late_ones(
    h: ModuleType,
) -> None:
    # long alone (29 ms) meets 30 ms but nobody else would behind it; without it the four
    # short prompts (240 tokens) share one 29 ms step: four requests meet the SLO, not one
    assert _finish_reasons(h, False, 0.03, BLOCKING) == {
        "long": "length", "s1": "rejected", "s2": "rejected", "s3": "rejected",
        "s4": "rejected",
    }  # fmt: skip
    assert _finish_reasons(h, True, 0.03, BLOCKING) == {
        "long": "rejected", "s1": "length", "s2": "length", "s3": "length", "s4": "length",
    }  # fmt: skip


def test_started_requests_are_never_given_up(h: ModuleType) -> None:
    config = SchedulerConfig(token_budget=64)
    engine = h.make_engine([h.spec("a", ttft=0.05)], policy="slack", config=config)
    engine.scheduler.policy = SlackPolicy(fewest_misses=True)
    engine.add_request("long", "a", [1] * 150, max_tokens=1, arrival_s=0.0)
    engine.step()  # long's first chunk (64 tokens) is in: it is no longer fresh
    for i in range(6):
        engine.add_request(f"s{i}", "a", [1] * 60, max_tokens=1, arrival_s=engine.clock.now())
    outs = engine.run_until_idle()
    reasons = {o.request_id: o.finish_reason for o in outs if o.finished}
    assert reasons["long"] == "length"
    assert "rejected" in reasons.values()  # the queue is too long for all of them
    h.assert_no_pages(engine)
