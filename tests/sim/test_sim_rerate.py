"""`GpuGroup.rerate` over activities on overlapping GPU sets: the same rates as the
quadratic reference (each activity slowed by every activity whose GPUs meet its own)."""

from __future__ import annotations

import random

import pytest

from fineserve.costmodel.table import TableCostModel
from fineserve.sim.device import Activity, GpuGroup


@pytest.mark.parametrize("seed", range(20))
def test_rerate_on_overlapping_sets_matches_the_reference(seed: int, table: TableCostModel) -> None:
    rng = random.Random(seed)
    sets = [frozenset({0}), frozenset({1}), frozenset({0, 1}), frozenset({2, 3}), frozenset({3})]
    group = GpuGroup((0, 1, 2, 3), table.interference, single_set=False)
    for i in range(rng.randint(1, 9)):
        gpus = rng.choice(sets)
        group.add(Activity(1.0, rng.choice([0.0, 1.0, rng.random()]), i, gpus=gpus))
    group.rerate()
    inter = table.interference
    pk, dk = inter.prefill_k, inter.decode_k
    active = group.active
    for a in active:
        n = sum(1 for b in active if not a.gpus.isdisjoint(b.gpus)) if len(active) > 1 else 1
        f = a.prefill_fraction
        want = 1.0 / (1.0 + (f * pk + (1.0 - f) * dk) * (n - 1)) if n > 1 else 1.0
        assert a.rate == want
