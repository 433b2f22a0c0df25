"""`SlackPolicy(fewest_misses=True)`: Moore-Hodgson admission gives up the longest prompt so
more requests meet their TTFT deadline; off by default (the cumulative check as before)."""

from __future__ import annotations

from types import ModuleType

from fineserve.scheduler.local import SchedulerConfig
from fineserve.scheduler.local.policies import SlackPolicy

# With the test cost model a chunk of n prompt tokens alone takes 5 ms + 0.1 ms * n.


def _finish_reasons(h: ModuleType, fewest_misses: bool) -> dict[str, str]:
    config = SchedulerConfig(token_budget=256)
    engine = h.make_engine([h.spec("a", ttft=0.025)], policy="slack", config=config)
    engine.scheduler.policy = SlackPolicy(fewest_misses=fewest_misses)
    engine.add_request("long", "a", [1] * 150, max_tokens=1, arrival_s=0.0)  # 20 ms alone
    engine.add_request("s1", "a", [1] * 20, max_tokens=1, arrival_s=0.0)  # 7 ms alone
    engine.add_request("s2", "a", [1] * 20, max_tokens=1, arrival_s=0.0)  # 7 ms alone
    outs = engine.run_until_idle()
    h.assert_no_pages(engine)
    return {o.request_id: o.finish_reason for o in outs if o.finished}


def test_cumulative_check_keeps_the_first_and_rejects_the_short_ones(h: ModuleType) -> None:
    # earliest deadline first: long ends at 20 ms, s1 would end at 27 ms > 25 ms, and so s2
    assert _finish_reasons(h, fewest_misses=False) == {
        "long": "length", "s1": "rejected", "s2": "rejected",
    }  # fmt: skip


def test_fewest_misses_gives_up_the_longest_prompt_instead(h: ModuleType) -> None:
    # s1 would be late behind long: the longest admitted (long) is given up, s1 ends at 7 ms
    # and s2 at 14 ms: two requests meet the deadline instead of one
    assert _finish_reasons(h, fewest_misses=True) == {
        "long": "rejected", "s1": "length", "s2": "length",
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
