"""Small simulator fixtures: one tiny model type, a hand-checkable cost table, one GPU."""

from __future__ import annotations

import pytest

from fineserve.costmodel.base import InstanceKey, InterferenceModel
from fineserve.costmodel.fit import StepCoeffs
from fineserve.costmodel.table import TableCostModel
from fineserve.memory.formats import KVFormat
from fineserve.sim.catalog import GpuSpec, ModelType, SimModel
from fineserve.sim.placement import PlacedInstance, Placement

A, B, C = 0.010, 0.0001, 1e-7  # prefill: a + b*T + c*pairs
D, E, F = 0.005, 0.0002, 1e-6  # decode: d + e*seqs + f*sum(context)

TINY = ModelType("tiny", "fp16", 1, KVFormat(2, 2, 64), 1_000_000, max_model_len=4096)
TINY_Q = ModelType("tiny", "int4", 1, KVFormat(2, 2, 64, dtype="int4"), 500_000, 4096)


@pytest.fixture
def table() -> TableCostModel:
    coeffs = StepCoeffs(prefill=(A, B, C, 0.0, 0.0), decode=(D, E, F))
    return TableCostModel(
        {InstanceKey("tiny", "fp16", 1): coeffs, InstanceKey("tiny", "int4", 1): coeffs},
        InterferenceModel(prefill_k=0.5, decode_k=0.1),
    )


@pytest.fixture
def gpu() -> GpuSpec:
    return GpuSpec(memory_bytes=64 * 1024**2, reserve_bytes=0, name="test")


def colocated_pair() -> tuple[list[SimModel], Placement]:
    """Two tiny models of different KV formats, both on GPU 0 (TTFT 2 s, TPOT 50 ms)."""
    models = [
        SimModel("m0", TINY, 1.0, ttft_slo_s=2.0, tpot_slo_s=0.05),
        SimModel("m1", TINY_Q, 1.0, ttft_slo_s=2.0, tpot_slo_s=0.05),
    ]
    return models, Placement(tuple(PlacedInstance(m.name, (0,)) for m in models), 1)


def tiny_model(name: str = "m0", rate: float = 1.0, ttft: float | None = 1.0) -> SimModel:
    return SimModel(name, TINY, rate, ttft_slo_s=ttft)
