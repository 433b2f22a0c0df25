"""Step lanes: plans over disjoint model sets in flight at once, one shared arena."""

from __future__ import annotations

import heapq
import random
from types import ModuleType

import pytest

from fineserve.engine.engine import Engine
from fineserve.engine.step import RequestOutput, StepPlan
from fineserve.scheduler.local import SchedulerConfig
from fineserve.sim.executor import token_stream

A, B, C = frozenset({"a"}), frozenset({"b"}), frozenset({"c"})


def run(engine: Engine, plan: StepPlan) -> list[RequestOutput]:
    result = engine.executor.execute(plan)
    engine.clock.advance(result.duration_s)
    return engine.finish_step(result, engine.clock.now())


def run_lanes(
    engine: Engine,
    lanes: list[frozenset[str]],
    seed: int = 0,
    check: object = None,
) -> tuple[list[tuple[float, RequestOutput]], list[tuple[float, float, frozenset[str]]]]:
    """Event loop: every idle lane with work begins a step; a step ends after its simulated
    duration (jittered so lanes drift apart); a lane with nothing to run waits for the next
    event. Returns (time, output) pairs and step spans."""
    rng = random.Random(seed)
    now, heap, outs, spans = 0.0, [], [], []
    running: set[frozenset[str]] = set()
    for _ in range(100_000):
        for lane in lanes:
            if lane not in running and engine.has_unfinished(lane):
                plan = engine.begin_step(now, lane)
                if check is not None:
                    check(engine, plan)
                result = engine.executor.execute(plan)
                if plan.empty:  # nothing this lane can run now: wait for the next event
                    outs += [(now, o) for o in engine.finish_step(result, now)]
                    continue
                end = now + result.duration_s * rng.uniform(0.5, 2.0)
                heapq.heappush(heap, (end, plan.step_id, lane, result))
                spans.append((now, end, lane))
                running.add(lane)
        if not heap:
            assert not engine.has_work()
            return outs, spans
        now, _, lane, result = heapq.heappop(heap)
        running.discard(lane)
        outs += [(now, o) for o in engine.finish_step(result, now)]
    raise AssertionError("did not finish")


def tokens(outs: list[tuple[float, RequestOutput]]) -> dict[str, list[int]]:
    by_id: dict[str, list[int]] = {}
    for _, o in outs:
        by_id.setdefault(o.request_id, []).extend(o.token_ids)
    return by_id


def test_two_lanes_step_independently_with_overlapping_time(h: ModuleType) -> None:
    engine = h.make_engine(h.two_models(), config=SchedulerConfig(token_budget=4096))
    engine.add_request("d", "b", [1] * 8, max_tokens=200)
    first = run(engine, engine.begin_step(0.0))  # d prefilled: decoding from now on
    engine.add_request("long", "a", [1] * 3000, max_tokens=2)
    t0 = engine.clock.now()
    long_plan = engine.begin_step(t0, A)
    assert [b.model for b in long_plan.batches] == ["a"]
    long_result = engine.executor.execute(long_plan)
    long_end = t0 + long_result.duration_s
    assert engine.busy_models() == A and engine.idle_models() == B
    now, decoded = t0, []
    while True:  # b's decodes step on their own while a's long prefill runs
        plan = engine.begin_step(now, B)
        assert [b.model for b in plan.batches] == ["b"]
        result = engine.executor.execute(plan)
        if now + result.duration_s > long_end:
            break
        now += result.duration_s
        decoded += [(now, o) for o in engine.finish_step(result, now)]
    assert len(decoded) >= 10 and all(t < long_end for t, _ in decoded)
    assert all(o.request_id == "d" and not o.finished for _, o in decoded)
    outs = engine.finish_step(long_result, long_end)
    assert [(o.request_id, o.token_ids) for o in outs] == [("long", [token_stream("long", 3000)])]
    last = engine.finish_step(result, now + result.duration_s)
    assert engine.busy_models() == frozenset()
    engine.clock.advance(now + result.duration_s - engine.clock.now())
    rest = first + [o for _, o in decoded] + last + engine.run_until_idle()
    assert h.tokens_of(h.collect(rest)["d"]) == [token_stream("d", p) for p in range(8, 8 + 200)]
    h.assert_no_pages(engine)


def test_lane_errors(h: ModuleType) -> None:
    engine = h.make_engine(h.two_models())
    engine.add_request("x", "a", [1] * 8, max_tokens=4)
    plan = engine.begin_step(0.0, A)
    with pytest.raises(RuntimeError, match="not finished"):
        engine.begin_step(0.0, frozenset({"a", "b"}))
    with pytest.raises(RuntimeError, match="has not been finished"):
        engine.begin_step(0.0)  # the whole device needs every lane finished
    with pytest.raises(ValueError, match="unknown models"):
        engine.begin_step(0.0, frozenset({"zz"}))
    other = engine.begin_step(0.0, B)
    assert other.empty and other.step_id != plan.step_id
    result = engine.executor.execute(plan)
    with pytest.raises(ValueError, match="in flight"):
        engine.finish_step(type(result)(999, {}, 0.0), 0.0)
    engine.finish_step(result, 0.1)
    engine.finish_step(engine.executor.execute(other), 0.1)
    with pytest.raises(RuntimeError, match="without begin_step"):
        engine.finish_step(result, 0.2)


def test_lanes_give_the_same_tokens_as_whole_device_steps(h: ModuleType) -> None:
    def load(engine: Engine) -> None:
        rng = random.Random(3)
        for i in range(30):
            model = "abc"[i % 3]
            prompt = [rng.randrange(1, 100) for _ in range(rng.randrange(5, 120))]
            engine.add_request(f"r{i}", model, prompt, max_tokens=rng.randrange(1, 40))

    specs = [h.spec("a"), h.spec("b", h.KVDtype.INT4), h.spec("c", h.KVDtype.FP8)]
    whole = h.make_engine(specs, pages=2000)
    load(whole)
    reference = {r: h.tokens_of(o) for r, o in h.collect(whole.run_until_idle()).items()}
    for lanes in ([A, B, C], [A | B, C]):
        engine = h.make_engine(specs, pages=2000)
        load(engine)
        outs, spans = run_lanes(engine, lanes)
        assert tokens(outs) == reference
        overlap = any(
            s1 < e0 and s0 < e1 for s0, e0, l0 in spans for s1, e1, l1 in spans if l0 != l1
        )
        assert overlap
        h.assert_no_pages(engine)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_preemption_never_hits_a_request_in_flight(h: ModuleType, seed: int) -> None:
    """A tight shared arena: lanes preempt each other's requests, never one in flight."""
    specs = [h.spec("a"), h.spec("b"), h.spec("c")]
    engine = h.make_engine(specs, pages=30, config=SchedulerConfig(token_budget=64))
    rng = random.Random(seed)
    prompts = {f"r{i}": rng.randrange(20, 60) for i in range(24)}
    for i, (rid, n) in enumerate(prompts.items()):
        engine.add_request(rid, "abc"[i % 3], [1] * n, max_tokens=50)
    cross = []

    def check(engine: Engine, plan: StepPlan) -> None:
        sched = engine.scheduler
        mine = {b.model for b in plan.batches}
        for other in engine.in_flight():
            if other is plan:
                continue
            for batch in other.batches:
                assert not set(batch.request_ids) & set(plan.preempted)
                for rid, table in zip(batch.request_ids, batch.page_tables, strict=True):
                    seq = sched.seqs[rid]
                    assert seq.pages is table and table  # pages untouched while in flight
        cross.extend(r for r in plan.preempted if r[1:] and "abc"[int(r[1:]) % 3] not in mine)

    outs, _ = run_lanes(engine, [A, B, C], seed=seed, check=check)
    assert engine.scheduler.stats.preemptions > 0
    assert cross  # some victims were other lanes' requests between their steps
    done = {o.request_id: o for _, o in outs if o.finished}
    assert len(done) == 24 and all(o.finish_reason == "length" for o in done.values())
    assert tokens(outs) == {
        rid: [token_stream(rid, p) for p in range(n, n + 50)] for rid, n in prompts.items()
    }
    h.assert_no_pages(engine)


def test_abort_while_its_lane_is_in_flight_frees_pages_when_it_finishes(h: ModuleType) -> None:
    engine = h.make_engine(h.two_models())
    engine.add_request("x", "a", [1] * 30, max_tokens=50)
    engine.add_request("y", "b", [1] * 30, max_tokens=3)
    engine.step()
    lane_a = engine.begin_step(engine.clock.now(), A)
    assert engine.abort("x")
    alloc = engine.scheduler.pages.allocator
    held = alloc.used_pages("a")
    assert held > 0
    outs_b = run(engine, engine.begin_step(engine.clock.now(), B))  # b steps meanwhile
    assert alloc.used_pages("a") == held  # the executor of lane a still reads them
    assert all(o.request_id == "y" for o in outs_b)
    outs = engine.finish_step(engine.executor.execute(lane_a), engine.clock.now())
    assert [(o.request_id, o.finish_reason) for o in outs] == [("x", "abort")]
    assert alloc.used_pages("a") == 0
    assert "x" in engine.begin_step(engine.clock.now(), A).released
    engine.finish_step(engine.executor.execute(engine.in_flight()[0]), engine.clock.now())
    engine.run_until_idle()
    h.assert_no_pages(engine)


def test_non_streaming_requests_get_first_and_final_outputs_only(h: ModuleType) -> None:
    def load(engine: Engine, stream: bool) -> None:
        for i in range(6):
            engine.add_request(f"r{i}", "ab"[i % 2], [i + 1] * 30, max_tokens=20 + i, stream=stream)

    def timed(engine: Engine) -> list[tuple[float, RequestOutput]]:
        outs = []
        while engine.has_work():
            step = engine.step()
            outs += [(engine.clock.now(), o) for o in step]
        return outs

    streaming, quiet = h.make_engine(h.two_models()), h.make_engine(h.two_models())
    load(streaming, True)
    load(quiet, False)
    ref, got = timed(streaming), timed(quiet)
    assert tokens(got) == tokens(ref)
    for rid in tokens(ref):
        mine = [(t, o) for t, o in got if o.request_id == rid]
        theirs = [(t, o) for t, o in ref if o.request_id == rid]
        assert len(mine) == 2 and len(mine[0][1].token_ids) == 1  # first token, then the rest
        assert mine[0][0] == theirs[0][0] and mine[-1][0] == theirs[-1][0]  # TTFT, end time
        last, ref_last = mine[-1][1], theirs[-1][1]
        assert last.finished and last.num_output_tokens == ref_last.num_output_tokens
    # an abort delivers the tokens not delivered yet
    engine = h.make_engine(h.two_models())
    engine.add_request("x", "a", [1] * 10, max_tokens=50, stream=False)
    outs = [o for _ in range(5) for o in engine.step()]
    assert engine.abort("x")
    outs += engine.drain_outputs()
    assert [len(o.token_ids) for o in outs] == [1, 4] and outs[-1].finish_reason == "abort"
    assert h.tokens_of(outs) == [token_stream("x", p) for p in range(10, 15)]
    h.assert_no_pages(engine)
