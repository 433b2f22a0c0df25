"""Continuous batching with chunked prefill, on the simulated executor and a virtual clock."""

from __future__ import annotations

from types import ModuleType

from fineserve.scheduler.local.config import SchedulerConfig
from fineserve.sim.executor import token_stream


def test_long_prompt_is_chunked_within_the_token_budget(h: ModuleType) -> None:
    engine = h.make_engine(h.two_models(), config=SchedulerConfig(token_budget=64))
    engine.add_request("r", "a", list(range(150)), max_tokens=2)
    plans = []
    for _ in range(3):
        plan = engine.begin_step(engine.clock.now())
        plans.append([(b.num_prefills, [len(t) for t in b.token_ids]) for b in plan.batches])
        engine.finish_step(engine.executor.execute(plan), engine.clock.now())
    assert plans == [[(1, [64])], [(1, [64])], [(1, [22])]]


def test_decodes_run_first_and_prefill_gets_the_rest_of_the_budget(h: ModuleType) -> None:
    engine = h.make_engine(h.two_models(), config=SchedulerConfig(token_budget=32))
    for i in range(4):
        engine.add_request(f"d{i}", "a", [1, 2, 3], max_tokens=50)
    engine.step()  # all four prefills fit in one step
    engine.add_request("long", "b", list(range(100)), max_tokens=1)
    plan = engine.begin_step(engine.clock.now())
    by_model = {b.model: b for b in plan.batches}
    decodes = by_model["a"]
    assert decodes.num_prefills == 0 and len(decodes) == 4
    assert [len(t) for t in by_model["b"].token_ids] == [28]  # 32 - 4 decodes
    assert plan.num_tokens == 32


def test_tokens_follow_the_deterministic_stream_and_max_tokens(h: ModuleType) -> None:
    engine = h.make_engine(h.two_models())
    engine.add_request("x", "a", [5] * 10, max_tokens=4)
    outs = h.collect(engine.run_until_idle())["x"]
    assert h.tokens_of(outs) == [token_stream("x", p) for p in range(10, 14)]
    assert outs[-1].finished and outs[-1].finish_reason == "length"
    assert [o.finished for o in outs] == [False, False, False, True]
    h.assert_no_pages(engine)


def test_stop_token_ends_a_request(h: ModuleType) -> None:
    engine = h.make_engine(h.two_models())
    stop = token_stream("s", 11)
    engine.add_request("s", "a", [5] * 10, max_tokens=100, stop_token_ids=[stop])
    outs = h.collect(engine.run_until_idle())["s"]
    assert h.tokens_of(outs) == [token_stream("s", 10), stop]
    assert outs[-1].finish_reason == "stop"
    h.assert_no_pages(engine)


def test_context_limit_ends_generation(h: ModuleType) -> None:
    engine = h.make_engine([h.spec("a", max_len=20)])
    engine.add_request("c", "a", [1] * 15, max_tokens=100)
    outs = h.collect(engine.run_until_idle())["c"]
    assert len(h.tokens_of(outs)) == 5 and outs[-1].finish_reason == "length"


def test_many_requests_across_models_all_finish_and_free_pages(h: ModuleType) -> None:
    models = [h.spec("a"), h.spec("b"), h.spec("c")]
    engine = h.make_engine(models, pages=400, config=SchedulerConfig(token_budget=128))
    for i in range(60):
        engine.add_request(f"r{i}", "abc"[i % 3], [i % 7 + 1] * (10 + 7 * i), max_tokens=1 + i % 9)
    outs = h.collect(engine.run_until_idle())
    assert len(outs) == 60
    for i in range(60):
        assert len(h.tokens_of(outs[f"r{i}"])) == 1 + i % 9
    h.assert_no_pages(engine)


def test_plan_invariants_hold_every_step(h: ModuleType) -> None:
    engine = h.make_engine(
        [h.spec("a"), h.spec("b")], pages=60, config=SchedulerConfig(token_budget=48)
    )
    for i in range(20):
        engine.add_request(f"r{i}", "ab"[i % 2], [1] * (5 + 9 * i), max_tokens=12)
    while engine.has_work():
        plan = engine.begin_step(engine.clock.now())
        assert plan.num_tokens <= 48
        seen = set()
        for batch in plan.batches:
            t = engine.scheduler.pages.tokens_per_page[batch.model]
            for i, rid in enumerate(batch.request_ids):
                assert rid not in seen
                seen.add(rid)
                end = batch.positions[i] + len(batch.token_ids[i])
                assert len(batch.page_tables[i]) * t >= end
                assert (i < batch.num_prefills) or len(batch.token_ids[i]) == 1
        result = engine.executor.execute(plan)
        engine.clock.advance(result.duration_s)
        engine.finish_step(result, engine.clock.now())
    h.assert_no_pages(engine)
