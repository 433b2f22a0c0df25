"""`costmodel.fit.padded_prefill_work` against the CPU engine's own prefill grouping
(`execution.fast_attention._group_prefills`): the cost model counts the score entries the engine
computes, members x longest query x longest key length per group."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from fineserve.costmodel.fit import PREFILL_PADDING_FACTOR, padded_prefill_work
from fineserve.execution.fast_attention import CpuFastBackend, _group_prefills

PAGE = 16


def _engine_work(chunks: list[tuple[int, int]]) -> int:
    seqs, row = [], 0
    for n, c0 in chunks:
        pages = -(-(n + c0) // PAGE)
        seqs.append(SimpleNamespace(start=row, end=row + n, page_table=torch.zeros(1, pages)))
        row += n
    meta = SimpleNamespace(prefills=seqs, tokens_per_page=PAGE)
    total = 0
    for group in _group_prefills(meta, PREFILL_PADDING_FACTOR):  # type: ignore[arg-type]
        q = max(seqs[i].end - seqs[i].start for i in group)
        k = max(seqs[i].page_table.shape[1] for i in group) * PAGE
        total += len(group) * q * k
    return total


@pytest.mark.parametrize("seed", range(20))
def test_cost_model_counts_the_engine_groups(seed: int) -> None:
    rng = random.Random(seed)
    chunks = [
        (rng.randint(1, 300), rng.choice([0, 0, 0, rng.randint(1, 200)]))
        for _ in range(rng.randint(1, 6))
    ]
    assert padded_prefill_work(chunks, PAGE) == _engine_work(chunks)


def test_factor_is_the_engine_default() -> None:
    assert CpuFastBackend().max_padding_factor == PREFILL_PADDING_FACTOR
