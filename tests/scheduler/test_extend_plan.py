"""`LocalScheduler.extend_plan` stands for the plan single steps would make next: after `done`
iterations of a decode plan (result not applied), it grants the same pages and gives the same
iterations as applying the result and planning with `schedule(..., horizon_pages=False)` on a
copy of the scheduler, and refuses (changing nothing) exactly when that plan would differ."""

from __future__ import annotations

import copy
import random

import pytest

from fineserve.costmodel.base import InstanceKey, InterferenceModel
from fineserve.costmodel.fit import StepCoeffs
from fineserve.costmodel.table import TableCostModel
from fineserve.engine.step import StepPlan, StepResult
from fineserve.memory.allocator import ModelKV
from fineserve.memory.formats import KVFormat
from fineserve.memory.registry import make_allocator
from fineserve.scheduler.local.config import SchedulerConfig, ServedModel
from fineserve.scheduler.local.scheduler import LocalScheduler

KEY = InstanceKey("tiny", "fp16", 1)
FMT = KVFormat(2, 2, 64)


def scheduler(blocks: int, policy: str) -> LocalScheduler:
    """One model on a uniform arena of `blocks` pages."""
    alloc = make_allocator("uniform", FMT.page_bytes * blocks, [ModelKV("m", FMT)])
    coeffs = StepCoeffs(prefill=(0.01, 1e-4, 1e-7, 0.0, 0.0), decode=(0.005, 2e-4, 1e-6))
    cost = TableCostModel({KEY: coeffs}, InterferenceModel(0.5, 0.1))
    served = [ServedModel("m", KEY, 4096, None, None)]
    return LocalScheduler(served, alloc, cost, policy, SchedulerConfig(token_budget=512))


def result(plan: StepPlan, steps: int) -> StepResult:
    """Token 7 for every sampled token of `steps` iterations of `plan`."""
    ids = [rid for batch in plan.batches for rid in batch.request_ids]
    if plan.num_steps > 1:
        lists = {rid: [7] * steps for rid in ids}
        return StepResult(plan.step_id, {}, 0.0, num_steps=steps, token_lists=lists)
    return StepResult(plan.step_id, dict.fromkeys(ids, 7), 0.0)


def page_counts(s: LocalScheduler) -> dict[str, int]:
    return {rid: len(seq.pages) for rid, seq in s.seqs.items()}


@pytest.mark.parametrize("horizon_pages", [False, True])
@pytest.mark.parametrize(("blocks", "seed"), [(40, 0), (60, 1), (400, 2)])
def test_extend_plan_equals_the_next_single_step_plan(
    blocks: int, seed: int, horizon_pages: bool
) -> None:
    """Decodes crossing page boundaries until the arena runs out, plans stopped after a
    random number of their iterations (as arrivals cut them): at every fold the pages given
    back, at every extension the grants, early pages and iterations of the copy's next plan,
    or a refusal exactly where that plan drops a decode (pages short), nothing changed."""
    rng = random.Random(seed)
    s = scheduler(blocks, "prism")
    for i in range(8):
        s.add_request(f"r{i}", "m", [1] * rng.randint(3, 40), 300, 0.0, stream=False)
    now = 0.0
    while s.waiting or s.prefilling:  # prefill everything with single steps
        plan = s.schedule(now)
        s.update(plan, result(plan, 1), now)
        now += 0.01
    extended = refused = 0
    for _ in range(30):
        plan = s.schedule(now, None, 64, horizon_pages=horizon_pages)
        done = rng.randint(1, plan.num_steps)
        while True:
            twin_s, twin_plan = copy.deepcopy((s, plan))
            twin_s.update(twin_plan, result(twin_plan, done), now)
            if not s.fold_plan(plan, done):
                break
            assert page_counts(s) == page_counts(twin_s)  # pages not used given back
            max_steps = rng.choice([1, 64])
            nxt = twin_s.schedule(now, None, max_steps, horizon_pages=horizon_pages)
            before = page_counts(s)
            k = s.extend_plan(plan, done, max_steps, horizon_pages)
            same_batch = (
                len(nxt.batches) == 1
                and nxt.batches[0].request_ids == plan.batches[0].request_ids
                and not nxt.preempted
            )
            if k == 0:
                refused += 1
                assert not same_batch
                assert page_counts(s) == before
                break
            extended += 1
            assert same_batch
            assert nxt.num_steps == k
            assert page_counts(s) == page_counts(twin_s)
            done += rng.randint(1, k)
        s.update(plan, result(plan, done), now)
        now += 0.01
        if not s.seqs:
            break
    assert extended > 0
    if blocks < 100:
        assert refused > 0  # the arena ran out while decodes crossed page boundaries


def test_extend_needs_a_plain_decode_only_plan() -> None:
    """A plan with prefill chunks, or with requests waiting, is not extended."""
    s = scheduler(400, "prism")
    s.add_request("a", "m", [1] * 20, 50, 0.0, stream=False)
    plan = s.schedule(0.0)
    assert plan.batches[0].num_prefills == 1
    assert not s.may_extend(plan, 1)
    s.update(plan, result(plan, 1), 0.0)
    plan = s.schedule(0.1, None, 64, horizon_pages=False)
    assert s.may_extend(plan, plan.num_steps)
    s.add_request("b", "m", [1] * 20, 50, 0.2, stream=False)
    assert not s.may_extend(plan, plan.num_steps)
    assert not s.fold_plan(plan, plan.num_steps)
