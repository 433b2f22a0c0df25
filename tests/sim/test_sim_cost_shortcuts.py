"""The cost model's exact shortcuts (memoized coefficient lookup, decode-only fast path,
a horizon's K decode iteration times in one pass) give the floats of the plain formula, and
the simulator's records and steps equal those of the plain per-iteration `step_time` path."""

from __future__ import annotations

import random
import zlib

import pytest
from tests.sim.test_sim_horizon import facts, scripted, simulate

from fineserve.costmodel.base import BatchShape, CostModel, CostModelHelpers, InstanceKey
from fineserve.costmodel.fit import StepCoeffs
from fineserve.costmodel.registry import make_cost_model
from fineserve.costmodel.table import TableCostModel
from fineserve.engine.step import ModelBatch, StepPlan
from fineserve.sim import stepper
from fineserve.sim.catalog import GpuSpec
from fineserve.sim.stepper import BatchCoster


def plain_step_time(model: TableCostModel, key: InstanceKey, batch: BatchShape) -> float:
    """The formula of `TableCostModel.step_time` as written before the shortcuts."""
    if batch.is_empty:
        return 0.0
    c = model._search(key)
    assert c is not None
    d, e, f = c.decode
    has_p, has_d = batch.prefill_tokens > 0, batch.num_decode > 0
    fixed = max(c.prefill[0] if has_p else 0.0, d if has_d else 0.0)
    if has_p and has_d and model._mixed:
        fixed += model.mixed_extra(key)
    _, b, cp, g, knee = c.prefill
    tokens = batch.prefill_tokens
    hinge = max(0.0, tokens - knee) if knee > 0 else 0.0
    t = fixed + (b * tokens + cp * batch.attention_pairs + g * hinge)
    return t + e * batch.num_decode + f * batch.decode_context_sum


def random_table(rng: random.Random) -> tuple[TableCostModel, list[InstanceKey]]:
    keys = [InstanceKey(f"m{i}", "fp16", 1) for i in range(3)]
    coeffs = {
        k: StepCoeffs(
            prefill=(
                rng.random() * 1e-2,
                rng.random() * 1e-5,
                rng.random() * 1e-9,
                rng.random() * 1e-6,
                float(rng.choice([0, 0, 200, 512])),
            ),
            decode=(rng.random() * 1e-2, rng.random() * 1e-4, rng.random() * 1e-7),
        )
        for k in keys
    }
    mixed = {keys[0]: rng.random() * 1e-3}
    return TableCostModel(coeffs, mixed_extra=mixed), keys


@pytest.mark.parametrize("seed", range(5))
def test_step_time_and_decode_step_times_equal_the_plain_formula(seed: int) -> None:
    """Bit-identical floats on random decode, prefill and mixed batches, and per iteration
    of `decode_step_times` (the default helper's answer included)."""
    rng = random.Random(seed)
    table, keys = random_table(rng)
    for _ in range(300):
        key = rng.choice(keys)
        ctx = tuple(rng.randint(1, 5000) for _ in range(rng.randint(0, 40)))
        pre = tuple((rng.randint(0, 500), rng.randint(0, 500)) for _ in range(rng.randint(0, 3)))
        for shape in (BatchShape(decode_context=ctx), BatchShape(pre, ctx), BatchShape(pre)):
            assert table.step_time(key, shape) == plain_step_time(table, key, shape)
        k = rng.randint(1, 64)
        want = [
            plain_step_time(table, key, BatchShape(decode_context=tuple(p + j for p in ctx)))
            for j in range(k)
        ]
        assert table.decode_step_times(key, ctx, k) == want
        assert CostModelHelpers.decode_step_times(table, key, ctx, k) == want
    with pytest.raises(KeyError):
        table.decode_step_times(InstanceKey("none", "fp16", 1), (3,), 2)
    assert table.step_time(InstanceKey("none", "fp16", 1), BatchShape()) == 0.0


def test_run_iterations_equals_the_plain_path_through_the_fallback_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`BatchCoster` on the registry's h100 model (table with a roofline fallback) gives the
    iteration works of per-iteration `step_time`, for every limit."""
    cost = make_cost_model("h100")
    rng = random.Random(7)
    keys = [InstanceKey("llama-3.1-8b", "fp16", 1), InstanceKey("qwen-3-32b", "fp16", 2)]
    assert cost.supports(keys[0])
    for trial in range(40):
        batches = []
        for b, key in enumerate(keys[: 1 + trial % 2]):  # one batch, then two
            n = rng.randint(1, 30)
            batches.append(
                ModelBatch(
                    f"m{b}",
                    key,
                    request_ids=[f"m{b}r{i}" for i in range(n)],
                    token_ids=[[1] for _ in range(n)],
                    positions=[rng.randint(1, 3000) for _ in range(n)],
                    samples=[True] * n,
                )
            )
        plan = StepPlan(1, 0.0, batches, num_steps=rng.randint(1, 64))
        limit = rng.choice([float("inf"), rng.random() * 0.2])
        fast = BatchCoster(cost).run_iterations(plan, limit)
        with monkeypatch.context() as m:
            m.setattr(BatchCoster, "decode_times", _plain_decoder)
            plain = BatchCoster(cost).run_iterations(plan, limit)
        assert fast[1] == plain[1]
        want_iters, want_lists, want_longest = reference_iterations(cost, plan, limit)
        assert fast[1] == want_iters
        assert fast[0].all_token_lists(plan) == want_lists
        assert fast[0].duration_s == want_longest
        assert fast[0].num_steps == plain[0].num_steps
        assert fast[0].all_token_lists(plan) == plain[0].all_token_lists(plan)
        assert fast[0].duration_s == plain[0].duration_s


def reference_iterations(
    cost: CostModel, plan: StepPlan, limit_s: float, vocab: int = 32000
) -> tuple[list[list[tuple[float, float]]], dict[str, list[int]], float]:
    """`BatchCoster.run_iterations` as written before the shortcuts: (iterations, token
    lists, longest)."""
    k = plan.num_steps
    iterations: list[list[tuple[float, float]]] = []
    start = 0.0
    while len(iterations) < k and (not iterations or start < limit_s):
        j = len(iterations)
        shapes = [
            BatchShape(decode_context=tuple(p + j for p in b.positions)) for b in plan.batches
        ]
        works = [
            (cost.step_time(b.key, sh), 0.0) for b, sh in zip(plan.batches, shapes, strict=True)
        ]
        iterations.append(works)
        start += max(w for w, _ in works)
    k = len(iterations)
    lists: dict[str, list[int]] = {}
    for batch in plan.batches:
        for rid, p in zip(batch.request_ids, batch.positions, strict=True):
            crc = zlib.crc32(rid.encode())
            lists[rid] = [(crc + 7919 * (p + 2 + j)) % vocab for j in range(k)]
    longest = sum(max(w for w, _ in it) for it in iterations)
    return iterations, lists, longest


def _plain_decoder(self: BatchCoster, key: InstanceKey) -> stepper.DecodeTimes:
    """The plain path: `step_time` of each shifted batch."""

    def times(positions: list[int], k: int) -> list[float]:
        step_time = self.cost_model.step_time
        return [
            step_time(key, BatchShape(decode_context=tuple(p + j for p in positions)))
            for j in range(k)
        ]

    return times


@pytest.mark.parametrize("scheme", ["fineserve", "fineserve_plus", "static", "muxserve", "prism"])
def test_sim_records_equal_the_plain_cost_path(
    scheme: str, table: TableCostModel, gpu: GpuSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole runs with horizons: every record and the step count as with per-iteration
    `step_time` calls."""
    reqs = scripted(150, 11, 120.0)
    fast, fast_sim = simulate(scheme, reqs, table, gpu, 64)
    monkeypatch.setattr(BatchCoster, "decode_times", _plain_decoder)
    plain, plain_sim = simulate(scheme, reqs, table, gpu, 64)
    assert fast_sim.stats.steps == plain_sim.stats.steps
    assert {r: facts(v) for r, v in fast.items()} == {r: facts(v) for r, v in plain.items()}
