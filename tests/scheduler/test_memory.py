"""KV pages: preemption by recompute and resume, abort frees everything, no model starves."""

from __future__ import annotations

from types import ModuleType

import pytest

from fineserve.scheduler.local import InvalidRequestError, SchedulerConfig


def run_workload(h: ModuleType, pages: int) -> tuple[dict, object]:
    engine = h.make_engine([h.spec("a")], pages=pages, config=SchedulerConfig(token_budget=64))
    for i in range(8):
        engine.add_request(f"r{i}", "a", [i + 1] * 40, max_tokens=60)
    return h.collect(engine.run_until_idle()), engine


def test_preempted_requests_resume_and_produce_the_same_tokens(h: ModuleType) -> None:
    roomy, roomy_engine = run_workload(h, pages=200)
    tight, engine = run_workload(h, pages=24)  # 8 x 7 pages needed at the end: must preempt
    assert roomy_engine.scheduler.stats.preemptions == 0
    assert engine.scheduler.stats.preemptions > 0
    for rid, outs in roomy.items():
        assert h.tokens_of(tight[rid]) == h.tokens_of(outs)
        assert tight[rid][-1].finish_reason == "length"
    h.assert_no_pages(engine)


def test_preemption_is_announced_in_the_plan(h: ModuleType) -> None:
    engine = h.make_engine([h.spec("a")], pages=24, config=SchedulerConfig(token_budget=64))
    for i in range(8):
        engine.add_request(f"r{i}", "a", [1] * 40, max_tokens=60)
    preempted = []
    while engine.has_work():
        plan = engine.begin_step(engine.clock.now())
        planned = {r for b in plan.batches for r in b.request_ids}
        assert not planned & set(plan.preempted)
        preempted += plan.preempted
        result = engine.executor.execute(plan)
        engine.clock.advance(result.duration_s)
        engine.finish_step(result, engine.clock.now())
    assert preempted


@pytest.mark.parametrize("steps_before_abort", [1, 2, 6])  # mid-prefill, just after, mid-decode
def test_abort_frees_every_page(h: ModuleType, steps_before_abort: int) -> None:
    engine = h.make_engine(h.two_models(), config=SchedulerConfig(token_budget=64))
    engine.add_request("x", "a", [1] * 100, max_tokens=50)
    engine.add_request("y", "b", [1] * 10, max_tokens=50)
    early = []
    for _ in range(steps_before_abort):
        early += engine.step()
    assert engine.scheduler.pages.allocator.used_pages("a") > 0
    assert engine.abort("x")
    assert engine.scheduler.pages.allocator.used_pages("a") == 0
    assert not engine.abort("x")
    outs = h.collect(early + engine.drain_outputs() + engine.run_until_idle())
    assert outs["x"][-1].finish_reason == "abort"
    assert len(h.tokens_of(outs["y"])) == 50
    h.assert_no_pages(engine)


def test_abort_while_the_step_runs_frees_pages_when_it_finishes(h: ModuleType) -> None:
    engine = h.make_engine(h.two_models())
    engine.add_request("x", "a", [1] * 30, max_tokens=50)
    engine.step()
    plan = engine.begin_step(engine.clock.now())
    assert engine.abort("x")
    assert engine.scheduler.pages.allocator.used_pages("a") > 0  # the executor still reads them
    outs = engine.finish_step(engine.executor.execute(plan), engine.clock.now())
    assert [(o.request_id, o.finish_reason) for o in outs] == [("x", "abort")]
    h.assert_no_pages(engine)


def test_abort_of_a_waiting_request(h: ModuleType) -> None:
    engine = h.make_engine(h.two_models())
    engine.add_request("w", "a", [1] * 30, max_tokens=5)
    assert engine.abort("w")
    assert not engine.abort("unknown")
    assert [o.finish_reason for o in engine.drain_outputs()] == ["abort"]
    assert not engine.has_work()


def test_no_model_starves_under_a_flood_of_another(h: ModuleType) -> None:
    for policy in ("fcfs", "saab", "slack"):
        engine = h.make_engine(
            [h.spec("flood"), h.spec("quiet")],
            pages=40,
            policy=policy,
            config=SchedulerConfig(token_budget=64),
        )
        for i in range(60):
            engine.add_request(f"f{i}", "flood", [1] * 50, max_tokens=30, arrival_s=0.0)
        engine.add_request("q", "quiet", [1] * 20, max_tokens=10, arrival_s=0.001)
        finished_at = None
        for step in range(10_000):
            if not engine.has_work():
                break
            if any(o.request_id == "q" and o.finished for o in engine.step()):
                finished_at = step
        assert finished_at is not None and finished_at < 200, policy
        h.assert_no_pages(engine)


def test_bad_requests_get_a_clear_error_and_others_keep_running(h: ModuleType) -> None:
    engine = h.make_engine([h.spec("a", max_len=64)])
    engine.add_request("good", "a", [1] * 10, max_tokens=3)
    cases = [
        (("u", "nope", [1], 1), "unknown model 'nope'"),
        (("long", "a", [1] * 64, 1), "does not fit"),
        (("zero", "a", [1], 0), "max_tokens"),
        (("empty", "a", [], 1), "empty"),
        (("good", "a", [1], 1), "already in use"),
    ]
    for args, message in cases:
        with pytest.raises(InvalidRequestError, match=message):
            engine.add_request(*args)
    assert issubclass(InvalidRequestError, ValueError)
    outs = h.collect(engine.run_until_idle())
    assert list(outs) == ["good"] and len(h.tokens_of(outs["good"])) == 3
