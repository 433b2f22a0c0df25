"""What the simulator serves: model types (architecture x precision x TP), models with their
traffic and SLOs, and the GPU. Frozen dataclasses, no I/O.

Weight bytes are the sizes of the public checkpoints (total over TP ranks); a KV format is per
TP rank (KV heads split across ranks), as `memory.formats` defines it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fineserve.costmodel.base import InstanceKey
from fineserve.memory.formats import KVDtype, KVFormat

MIB = 1024**2
GIB = 1024**3
H100_BYTES = 81_559 * MIB  # what the driver reports for an 80 GB H100
ACTIVATION_RESERVE = 4 * GIB + GIB // 2  # activations, CUDA graphs, context (assumed, per GPU)


@dataclass(frozen=True)
class ModelType:
    """One architecture in one precision at one TP degree.

    `arch` and `qformat` name the cost-model instance (`InstanceKey(arch, qformat, tp)`).
    Invariant: `tp >= 1`, `weight_bytes > 0`, `kv` is the KV page format of one rank.
    """

    arch: str
    qformat: str
    tp: int
    kv: KVFormat
    weight_bytes: int
    max_model_len: int = 8192

    def __post_init__(self) -> None:
        if self.tp < 1 or self.weight_bytes <= 0 or self.max_model_len < 2:
            raise ValueError(f"bad model type {self}")

    @property
    def key(self) -> InstanceKey:
        return InstanceKey(self.arch, self.qformat, self.tp)

    @property
    def weight_bytes_per_gpu(self) -> int:
        return -(-self.weight_bytes // self.tp)


@dataclass(frozen=True)
class SimModel:
    """A served model: its type, request rate (req/s, for placement and quotas) and SLOs."""

    name: str
    mtype: ModelType
    rate: float
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None

    def with_slo(self, ttft_slo_s: float | None, tpot_slo_s: float | None = None) -> SimModel:
        return replace(self, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s)

    def with_rate(self, rate: float) -> SimModel:
        return replace(self, rate=rate)


@dataclass(frozen=True)
class GpuSpec:
    """One GPU: device memory and the reserve kept for activations and runtime."""

    memory_bytes: int = H100_BYTES
    reserve_bytes: int = ACTIVATION_RESERVE
    name: str = "H100-80GB"

    @property
    def usable_bytes(self) -> int:
        return self.memory_bytes - self.reserve_bytes


_L8 = {"num_layers": 32, "kv_heads": 8, "head_dim": 128}

LLAMA8B_FP16 = ModelType("llama-3.1-8b", "fp16", 1, KVFormat(**_L8), 16_060_000_000)
LLAMA8B_AWQ = ModelType("llama-3.1-8b", "awq", 1, KVFormat(**_L8), 5_730_000_000)
LLAMA8B_FP8 = ModelType("llama-3.1-8b", "fp8", 1, KVFormat(**_L8, dtype=KVDtype.FP8), 9_080_000_000)
LLAMA8B_QOQ = ModelType(
    "llama-3.1-8b", "qoq", 1, KVFormat(**_L8, dtype=KVDtype.INT4), 5_700_000_000
)
QWEN32B_FP16_TP2 = ModelType("qwen-3-32b", "fp16", 2, KVFormat(64, 8 // 2, 128), 65_520_000_000)
LLAMA70B_FP16_TP4 = ModelType(
    "llama-3.1-70b", "fp16", 4, KVFormat(80, 8 // 4, 128), 141_110_000_000
)

PAPER_8B_TYPES: tuple[ModelType, ...] = (LLAMA8B_FP16, LLAMA8B_AWQ, LLAMA8B_FP8, LLAMA8B_QOQ)


def paper_models(copies_8b: int = 5) -> list[tuple[str, ModelType]]:
    """The `paper` experiment's catalogue: `copies_8b` copies of each Llama-3.1-8B precision
    (FP16, AWQ, FP8, QoQ), one Qwen3-32B FP16 at TP=2 and one Llama-3.1-70B FP16 at TP=4."""
    out: list[tuple[str, ModelType]] = []
    for c in range(copies_8b):
        for t in PAPER_8B_TYPES:
            out.append((f"llama8b-{t.qformat}-{c}", t))
    out.append(("qwen32b-fp16", QWEN32B_FP16_TP2))
    out.append(("llama70b-fp16", LLAMA70B_FP16_TP4))
    return out


def slo_scaled(model: SimModel, factor: float) -> SimModel:
    """`model` with its TTFT and TPOT SLOs (those it has) times `factor`."""
    ttft, tpot = model.ttft_slo_s, model.tpot_slo_s
    return model.with_slo(
        None if ttft is None else ttft * factor, None if tpot is None else tpot * factor
    )
