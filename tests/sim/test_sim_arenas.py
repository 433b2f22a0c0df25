"""How a GPU's memory left after weights is split between the GPU sets that share it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tests.sim.conftest import TINY

from fineserve.sim.catalog import GpuSpec, SimModel
from fineserve.sim.loop import group_arenas
from fineserve.sim.placement import PlacedInstance, Placement

MIB = 1024**2


def _models() -> dict[str, SimModel]:
    """A TP=2 model of 8 MiB weights (4 MiB per rank) and two 1-GPU models, 2 MiB and 6 MiB."""
    tp2 = replace(TINY, tp=2, weight_bytes=8 * MIB)
    small = replace(TINY, weight_bytes=2 * MIB)
    big = replace(TINY, weight_bytes=6 * MIB)
    return {
        "wide": SimModel("wide", tp2, 1.0),
        "small": SimModel("small", small, 1.0),
        "big": SimModel("big", big, 1.0),
    }


def test_single_gpu_sets_take_what_the_tp_set_leaves() -> None:
    gpu = GpuSpec(memory_bytes=32 * MIB, reserve_bytes=0, name="test")
    placement = Placement(
        (
            PlacedInstance("small", (0,)),
            PlacedInstance("wide", (0, 1)),
            PlacedInstance("big", (1,)),
        ),
        2,
    )
    arenas = group_arenas(placement, _models(), gpu)
    # GPU 0 leaves 32 - 4 - 2 = 26 MiB, GPU 1 leaves 32 - 4 - 6 = 22 MiB; the TP set gets an
    # even split of the tighter GPU (11 MiB per rank), each single set the rest of its GPU
    assert arenas[(0, 1)] == 11 * MIB
    assert arenas[(0,)] == 26 * MIB - 11 * MIB
    assert arenas[(1,)] == 22 * MIB - 11 * MIB
    assert list(arenas) == [(0,), (0, 1), (1,)]  # the placement's order


def test_a_gpu_without_room_for_kv_is_an_error() -> None:
    gpu = GpuSpec(memory_bytes=10 * MIB, reserve_bytes=0, name="test")
    placement = Placement((PlacedInstance("wide", (0, 1)), PlacedInstance("big", (1,))), 2)
    with pytest.raises(ValueError, match="leave no KV memory"):
        group_arenas(placement, _models(), gpu)
