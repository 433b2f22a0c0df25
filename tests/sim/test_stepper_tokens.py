"""`BatchCoster` samples exactly `token_stream`'s tokens (column-wise arithmetic included)."""

from __future__ import annotations

import random

import pytest

from fineserve.costmodel.base import InstanceKey
from fineserve.engine.step import ModelBatch, StepPlan
from fineserve.sim.executor import LinearCostModel, token_stream
from fineserve.sim.stepper import BatchCoster

KEY = InstanceKey("a", "fp16")


def mixed_plan(rng: random.Random, n_pre: int, n_dec: int) -> StepPlan:
    ids = [f"q{rng.randrange(10**9)}-{i}" for i in range(n_pre + n_dec)]
    chunks = [[1] * rng.randint(1, 40) for _ in range(n_pre)] + [[5]] * n_dec
    positions = [rng.randrange(0, 5000) for _ in ids]
    batch = ModelBatch("a", KEY, ids, chunks, positions, [[0]] * len(ids),
                       [rng.random() < 0.7 for _ in range(n_pre)] + [True] * n_dec,
                       [None] * len(ids), [0] * len(ids), num_prefills=n_pre)  # fmt: skip
    return StepPlan(step_id=1, now=0.0, batches=[batch])


@pytest.mark.parametrize("vocab", [32000, 1000, 7])
@pytest.mark.parametrize("seed", range(4))
def test_run_samples_the_token_stream(vocab: int, seed: int) -> None:
    rng = random.Random(seed)
    plan = mixed_plan(rng, rng.randint(0, 3), rng.randint(1, 50))
    coster = BatchCoster(LinearCostModel(), vocab_size=vocab)
    (batch,) = plan.batches
    for _ in range(2):  # CRCs unknown, then cached
        result, _ = coster.run(plan)
        expected = {}
        for i, rid in enumerate(batch.request_ids):
            if batch.samples[i]:
                fed = len(batch.token_ids[i]) if i < batch.num_prefills else 1
                expected[rid] = token_stream(rid, batch.positions[i] + fed, vocab)
        assert result.all_tokens(plan) == expected
        # the decodes' tokens come as the batch's column, in batch order
        decodes = batch.request_ids[batch.num_prefills :]
        assert result.columns == {"a": [expected[rid] for rid in decodes]}
        assert set(result.tokens) == set(expected) - set(decodes)


@pytest.mark.parametrize("vocab", [32000, 1000, 2 * 7919])
@pytest.mark.parametrize("k", [1, 9, 64])
def test_token_lists_continue_the_stream(vocab: int, k: int) -> None:
    """Orbit slices (an invertible stride) and the plain formula (2 * 7919: none)."""
    rng = random.Random(3)
    plan = mixed_plan(rng, 0, 30)
    coster = BatchCoster(LinearCostModel(), vocab_size=vocab)
    assert (coster.orbit(k) is None) == (vocab % 7919 == 0)
    for _ in range(2):  # bases unknown, then cached
        lists = coster.token_lists(plan, k)
        (batch,) = plan.batches
        assert coster.token_columns(plan, k) == {"a": [lists[r] for r in batch.request_ids]}
        assert set(lists) == set(batch.request_ids)
        for rid, p in zip(batch.request_ids, batch.positions, strict=True):
            assert lists[rid] == [token_stream(rid, p + 1 + j, vocab) for j in range(k)]
