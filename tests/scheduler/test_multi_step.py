"""Multi-step decode plans (`begin_step(..., max_steps=K)`): the same as K single steps."""

from __future__ import annotations

from dataclasses import replace
from types import ModuleType

import pytest

from fineserve.costmodel.base import BatchShape
from fineserve.engine.clock import VirtualClock
from fineserve.engine.engine import Engine
from fineserve.engine.factory import build_engine
from fineserve.engine.step import RequestOutput
from fineserve.scheduler.local.config import SchedulerConfig
from fineserve.sim.executor import LinearCostModel, SimExecutor


def decoding_engine(h: ModuleType, lengths: list[int], policy: str = "fcfs") -> Engine:
    """Model "a" with one request per entry of `lengths` (max_tokens), all prefilled."""
    engine = h.make_engine([h.spec("a", tpot=1.0)], policy=policy)
    for i, n in enumerate(lengths):
        engine.add_request(f"r{i}", "a", [1] * (10 + 7 * i), max_tokens=n, stream=False)
    while engine.scheduler.prefilling or engine.scheduler.waiting:
        engine.step()
    return engine


def run(engine: Engine, max_steps: int) -> tuple[list[RequestOutput], list[int], dict[str, float]]:
    """Steps until idle, each planned with `max_steps`: outputs, each plan's iterations, and
    the clock when each request finished."""
    outputs: list[RequestOutput] = []
    iterations: list[int] = []
    ends: dict[str, float] = {}
    while engine.has_work():
        plan = engine.begin_step(engine.clock.now(), max_steps=max_steps)
        result = engine.executor.execute(plan)
        engine.clock.advance(result.duration_s)
        outs = engine.finish_step(result, engine.clock.now())
        ends.update((o.request_id, engine.clock.now()) for o in outs if o.finished)
        outputs += outs
        iterations.append(plan.num_steps)
    return outputs, iterations, ends


def test_a_decode_only_plan_spans_up_to_the_first_end(h: ModuleType) -> None:
    engine = decoding_engine(h, [9, 30, 40])
    plan = engine.begin_step(engine.clock.now(), max_steps=64)
    assert plan.num_steps == 8  # r0 has 8 tokens left: it ends in the last iteration
    (batch,) = plan.batches
    t = h.PAGE_TOKENS
    for pos, table in zip(batch.positions, batch.page_tables, strict=True):
        assert len(table) == -(-(pos + 8) // t)  # KV of all 8 iterations fits
    result = engine.executor.execute(plan)
    assert result.num_steps == 8 and all(len(v) == 8 for v in result.token_lists.values())
    outs = engine.finish_step(result, 1.0)
    assert [(o.request_id, o.finished, len(o.token_ids)) for o in outs] == [("r0", True, 8)]
    seq = engine.scheduler.seqs["r1"]
    assert seq.num_computed == len(seq.tokens) - 1 and seq.last_token_s == 1.0


def test_multi_step_gives_the_outputs_and_times_of_single_steps(h: ModuleType) -> None:
    lengths = [5, 17, 33, 34, 60]
    single, ones, single_ends = run(decoding_engine(h, lengths), 1)
    multi, spans, multi_ends = run(decoding_engine(h, lengths), 16)
    assert set(ones) == {1} and max(spans) == 16 and len(spans) < len(ones)
    assert sum(spans) == len(ones)  # the same iterations, fewer plans
    key = [(o.request_id, o.token_ids, o.finished, o.finish_reason) for o in single]
    assert [(o.request_id, o.token_ids, o.finished, o.finish_reason) for o in multi] == key
    assert multi_ends == pytest.approx(single_ends, rel=1e-12, abs=1e-12)


def test_a_plan_stopped_early_keeps_only_the_pages_it_needs(h: ModuleType) -> None:
    engine = decoding_engine(h, [40, 40])
    alloc = engine.scheduler.pages.allocator
    before = alloc.used_pages("a")
    plan = engine.begin_step(engine.clock.now(), max_steps=32)
    assert plan.num_steps == 32 and alloc.used_pages("a") > before
    result = engine.executor.execute(plan)
    result.num_steps = 3  # the simulator cut it after three iterations
    engine.finish_step(result, 1.0)
    t = h.PAGE_TOKENS
    for seq in engine.scheduler.seqs.values():
        assert len(seq.pages) == -(-seq.num_computed // t)
        assert seq.num_output == 4  # first token + 3
    alloc.check_integrity()


def test_no_span_while_a_request_waits_or_streams(h: ModuleType) -> None:
    engine = decoding_engine(h, [40, 40])
    engine.add_request("late", "a", [1] * 5, max_tokens=4, stream=False)
    assert engine.begin_step(engine.clock.now(), max_steps=8).num_steps == 1
    streaming = h.make_engine([h.spec("a")])
    streaming.add_request("s", "a", [1] * 5, max_tokens=20)  # stream=True by default
    streaming.step()
    assert streaming.begin_step(streaming.clock.now(), max_steps=8).num_steps == 1


def test_the_tpot_limit_of_the_last_iteration_bounds_the_span(h: ModuleType) -> None:
    """SAAB's decode limit must hold for the contexts of every iteration: with a TPOT SLO
    that both decodes meet for 3 more tokens of context but not 4, the span (halved from
    16 until it holds) is 4."""
    cost = LinearCostModel(fixed_s=0.005, per_token_s=0.0001, per_context_s=0.0001)
    specs = [h.spec("a", tpot=1.0)]
    engine = build_engine(
        specs, 1000 * h.page_bytes(), SimExecutor(cost), cost, policy="saab",
        config=SchedulerConfig(token_budget=64), clock=VirtualClock(),
    )  # fmt: skip
    for i in range(2):
        engine.add_request(f"r{i}", "a", [1] * 10, max_tokens=50, stream=False)
    while engine.scheduler.waiting or engine.scheduler.prefilling:
        engine.step()
    pos = [s.num_computed for s in engine.scheduler.seqs.values()]
    key = specs[0].served.key
    tpot = cost.step_time(key, BatchShape(decode_context=tuple(p + 3 for p in pos))) + 1e-9
    served = replace(specs[0].served, tpot_slo_s=tpot)
    engine.scheduler.models["a"] = served
    plan = engine.begin_step(engine.clock.now(), max_steps=16)
    assert len(plan.batches[0]) == 2 and plan.num_steps == 4


def test_without_horizon_pages_a_span_takes_no_page(h: ModuleType) -> None:
    """`horizon_pages=False` (an engine that pays for mapping pages when it takes them):
    the span stops where the first decode's pages are full, no page is taken early, and
    it gives the outputs and times of single steps."""
    engine = decoding_engine(h, [40, 40, 40])
    alloc = engine.scheduler.pages.allocator
    t = h.PAGE_TOKENS
    seqs = list(engine.scheduler.seqs.values())
    room = min(len(s.pages) * t - s.num_computed for s in seqs)
    before = alloc.used_pages("a")
    plan = engine.begin_step(engine.clock.now(), max_steps=64, horizon_pages=False)
    assert plan.num_steps == max(room, 1) and room < 40
    assert alloc.used_pages("a") == before  # none was full: no page taken

    def run_capped(engine: Engine) -> tuple[list[RequestOutput], list[int], dict[str, float]]:
        outputs: list[RequestOutput] = []
        spans: list[int] = []
        ends: dict[str, float] = {}
        while engine.has_work():
            full = sum(len(s.pages) * t <= s.num_computed for s in engine.scheduler.seqs.values())
            plan = engine.begin_step(engine.clock.now(), max_steps=16, horizon_pages=False)
            if plan.num_steps > 1:  # only the pages of the first iteration's full decodes
                assert sum(len(p) for p in plan.new_pages.values()) == full
            result = engine.executor.execute(plan)
            engine.clock.advance(result.duration_s)
            outs = engine.finish_step(result, engine.clock.now())
            ends.update((o.request_id, engine.clock.now()) for o in outs if o.finished)
            outputs += outs
            spans.append(plan.num_steps)
        return outputs, spans, ends

    lengths = [5, 17, 33, 34, 60]
    single, ones, single_ends = run(decoding_engine(h, lengths), 1)
    capped, spans, capped_ends = run_capped(decoding_engine(h, lengths))
    assert max(spans) > 1 and sum(spans) == len(ones)
    key = [(o.request_id, o.token_ids, o.finished, o.finish_reason) for o in single]
    assert [(o.request_id, o.token_ids, o.finished, o.finish_reason) for o in capped] == key
    assert capped_ends == pytest.approx(single_ends, rel=1e-12, abs=1e-12)
