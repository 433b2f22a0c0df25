"""Scenarios for the memory benchmark: which models share one GPU and what traffic they get.

`h100-mixed`: one 80 GB H100 (81,559 MiB as the driver reports it) holding Llama-3.1-8B in FP16,
AWQ (FP16 KV), FP8 (FP8 KV) and QoQ (INT4 KV), plus one TP=2 rank of Qwen3-32B in FP16. Weight
bytes are the sizes of the public checkpoints of those models (per rank for TP); the arena is
what the weights leave after a fixed activation and runtime reserve (on a GPU the engine
measures that reserve; here it is an assumption, stated below).
"""

from __future__ import annotations

from dataclasses import dataclass

from fineserve.memory.formats import KVDtype, KVFormat

GIB = 1024**3
H100_BYTES = 81_559 * 1024**2
ACTIVATION_RESERVE = 4 * GIB + GIB // 2  # activations, CUDA graphs and context (assumed)


@dataclass(frozen=True)
class ScenarioModel:
    name: str
    fmt: KVFormat
    weight_bytes: int


@dataclass(frozen=True)
class MemoryScenario:
    name: str
    device_bytes: int
    reserve_bytes: int
    models: tuple[ScenarioModel, ...]
    base_rate_rps: float  # total request rate at load scale 1.0
    step_s: float  # wall time of one engine step (one token per running request)

    @property
    def arena_bytes(self) -> int:
        weights = sum(m.weight_bytes for m in self.models)
        arena = self.device_bytes - weights - self.reserve_bytes
        if arena <= 0:
            raise ValueError(f"scenario {self.name!r}: the weights leave no KV memory")
        return arena


LLAMA8B_KV = {"num_layers": 32, "kv_heads": 8, "head_dim": 128}

H100_MIXED = MemoryScenario(
    name="h100-mixed",
    device_bytes=H100_BYTES,
    reserve_bytes=ACTIVATION_RESERVE,
    models=(
        ScenarioModel("llama8b-fp16", KVFormat(**LLAMA8B_KV, dtype=KVDtype.FP16), 16_060_000_000),
        ScenarioModel("llama8b-awq", KVFormat(**LLAMA8B_KV, dtype=KVDtype.FP16), 5_730_000_000),
        ScenarioModel("llama8b-fp8", KVFormat(**LLAMA8B_KV, dtype=KVDtype.FP8), 9_080_000_000),
        ScenarioModel("llama8b-qoq", KVFormat(**LLAMA8B_KV, dtype=KVDtype.INT4), 5_700_000_000),
        ScenarioModel("qwen3-32b-tp2", KVFormat(64, 4, 128, KVDtype.FP16), 65_520_000_000 // 2),
    ),
    base_rate_rps=5.5,  # the Azure 2023 conversation trace's mean rate
    step_s=0.03,
)

SCENARIOS = {s.name: s for s in (H100_MIXED,)}
