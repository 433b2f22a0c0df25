"""A result giving its decodes' tokens as `StepResult.columns` is applied exactly as the same
result with them by request id (plain, streaming, aborted in flight, multi-step)."""

from __future__ import annotations

import random
from types import ModuleType

import pytest

from fineserve.engine.engine import Engine
from fineserve.engine.step import RequestOutput, StepPlan, StepResult


def as_columns(plan: StepPlan, result: StepResult) -> StepResult:
    """`result` with every batch's decode tokens moved into `columns`."""
    tokens, lists = dict(result.tokens), dict(result.token_lists)
    columns: dict[str, list[object]] = {}
    for batch in plan.batches:
        decodes = batch.request_ids[batch.num_prefills :]
        if decodes and plan.num_steps > 1:
            columns[batch.model] = [lists.pop(rid) for rid in decodes]
        elif decodes:
            columns[batch.model] = [tokens.pop(rid) for rid in decodes]
    return StepResult(result.step_id, tokens, result.duration_s, result.stopped,
                      result.num_steps, lists, columns)  # fmt: skip


def drive(
    h: ModuleType, seed: int, columns: bool
) -> tuple[list[RequestOutput], list[list[int]], int]:
    """Outputs, the unfinished sequences' tokens, and the multi-step plans run."""
    rng = random.Random(seed)
    engine: Engine = h.make_engine([h.spec("a", tpot=1.0), h.spec("b", tpot=1.0)], pages=90)
    outputs: list[RequestOutput] = []
    for i in range(30):
        model = rng.choice("ab")
        prompt = [1] * rng.randint(3, 60)
        stream = i < 20 and rng.random() < 0.3  # the last ones run multi-step plans
        engine.add_request(f"r{i}", model, prompt, max_tokens=rng.randint(1, 40), stream=stream)
    steps = multi = 0
    while engine.has_work():
        plan = engine.begin_step(engine.clock.now(), max_steps=rng.choice([1, 1, 8]))
        result = engine.executor.execute(plan)
        if rng.random() < 0.1 and engine.scheduler.decoding["a"]:
            engine.abort(rng.choice(sorted(engine.scheduler.decoding["a"])))
        if columns:
            result = as_columns(plan, result)
        engine.clock.advance(result.duration_s)
        outputs += engine.finish_step(result, engine.clock.now())
        steps += 1
        multi += plan.num_steps > 1
    seqs = [list(s.tokens) for s in engine.scheduler.seqs.values()]
    assert steps > 20
    return outputs, seqs, multi


@pytest.mark.parametrize("seed", range(5))
def test_columns_are_applied_as_tokens_by_request_id(h: ModuleType, seed: int) -> None:
    plain = drive(h, seed, columns=False)
    assert drive(h, seed, columns=True) == plain
    assert sum(len(o.token_ids) for o in plain[0]) > 100
    assert plain[2] > 0, "the test needs multi-step plans"
    assert any(o.finish_reason == "abort" for o in plain[0])
