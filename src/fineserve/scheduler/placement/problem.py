"""What a placement problem is: models with their demand, the cluster, and a cost model.

Everything here is a frozen dataclass with no I/O. Byte counts are integers; rates are requests
per second; SLOs are seconds. A model's KV format is given per TP degree (the format of one
rank's page), because TP splits the KV heads across ranks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fineserve.costmodel.base import CostModel, InstanceKey
from fineserve.costmodel.roofline import QFORMATS, ModelSpec
from fineserve.memory.formats import KVDtype, KVFormat

GIB = 1 << 30
KV_DTYPE_OF_QFORMAT: Mapping[str, KVDtype] = {
    "fp32": KVDtype.FP32,
    "fp16": KVDtype.FP16,
    "bf16": KVDtype.BF16,
    "awq": KVDtype.FP16,
    "gptq": KVDtype.FP16,
    "w8a8": KVDtype.FP16,
    "fp8": KVDtype.FP8,
    "qoq": KVDtype.INT4,
    "int8kv": KVDtype.INT8,
}


class InfeasibleError(ValueError):
    """No placement can serve the input; the message says which model and why."""


@dataclass(frozen=True)
class ModelDemand:
    """One model to place: identity, size, KV page format per TP degree, load and SLOs.

    Invariants: ``weight_bytes > 0``; ``rate >= 0``; ``kv_formats`` has an entry for every TP
    degree in ``tp_options``; a TP rank holds ``weight_bytes / tp`` of the weights.
    """

    name: str
    arch: str  # cost-model model name, e.g. "llama-3.1-8b"
    qformat: str
    weight_bytes: int
    kv_formats: Mapping[int, KVFormat]
    rate: float
    ttft_slo_s: float
    tpot_slo_s: float | None = None
    prompt_len: int = 512
    output_len: int = 256
    tp_options: tuple[int, ...] = (1, 2, 4, 8)
    path: str | None = None  # Hugging Face folder, when the model is served for real

    def __post_init__(self) -> None:
        if self.weight_bytes <= 0:
            raise ValueError(f"model {self.name!r}: weight_bytes must be > 0")
        if self.rate < 0:
            raise ValueError(f"model {self.name!r}: rate must be >= 0")
        if not self.ttft_slo_s > 0 or (self.tpot_slo_s is not None and not self.tpot_slo_s > 0):
            raise ValueError(f"model {self.name!r}: SLOs must be > 0")
        if self.prompt_len < 1 or self.output_len < 1:
            raise ValueError(f"model {self.name!r}: prompt_len and output_len must be >= 1")
        missing = [tp for tp in self.tp_options if tp not in self.kv_formats]
        if missing or not self.tp_options:
            raise ValueError(f"model {self.name!r}: no KV format for TP degrees {missing}")

    def key(self, tp: int) -> InstanceKey:
        return InstanceKey(self.arch, self.qformat, tp)

    def weight_bytes_per_gpu(self, tp: int) -> int:
        return -(-self.weight_bytes // tp)

    def seq_kv_bytes(self, tp: int) -> int:
        """KV bytes (per rank) of one sequence of prompt + output tokens, in whole pages."""
        fmt = self.kv_formats[tp]
        pages = -(-(self.prompt_len + self.output_len) // fmt.tokens_per_page)
        return pages * fmt.page_bytes


@dataclass(frozen=True)
class ClusterSpec:
    """Nodes x GPUs of one kind. ``reserve_bytes`` per GPU is kept for activations.

    GPU ids are ``n{node}g{index}``; a TP group is an aligned run of ``tp`` GPUs of one node.
    """

    nodes: int
    gpus_per_node: int
    gpu_memory_bytes: int = 80 * GIB
    reserve_bytes: int = 4 * GIB
    gpu_name: str = "h100"

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ValueError("a cluster needs nodes >= 1 and gpus_per_node >= 1")
        if not 0 <= self.reserve_bytes < self.gpu_memory_bytes:
            raise ValueError("reserve_bytes must be in [0, gpu_memory_bytes)")

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def usable_bytes(self) -> int:
        """Bytes per GPU for weights and KV."""
        return self.gpu_memory_bytes - self.reserve_bytes

    def gpu_ids(self) -> list[str]:
        return [f"n{n}g{g}" for n in range(self.nodes) for g in range(self.gpus_per_node)]

    def groups(self, tp: int) -> list[tuple[str, ...]]:
        """Aligned TP groups of size ``tp`` (none when tp does not divide a node)."""
        if tp < 1 or tp > self.gpus_per_node or self.gpus_per_node % tp:
            return []
        return [
            tuple(f"n{n}g{g}" for g in range(start, start + tp))
            for n in range(self.nodes)
            for start in range(0, self.gpus_per_node, tp)
        ]


@dataclass(frozen=True)
class PlacementOptions:
    """Knobs shared by every policy and the predictor.

    - ``max_batch``: cap on a model instance's running batch (the local scheduler's max_running).
    - ``util_cap``: a GPU's predicted busy share may not exceed this when a policy adds work.
    - ``target_attainment``: what a model option must reach alone to count as feasible.
    - ``max_replicas``: replicas per model at most.
    """

    max_batch: int = 256
    util_cap: float = 0.85
    target_attainment: float = 0.95
    max_replicas: int = 16


@dataclass(frozen=True)
class PlacementProblem:
    """Input of every policy: models, cluster, cost model and options."""

    models: tuple[ModelDemand, ...]
    cluster: ClusterSpec
    cost_model: CostModel = field(compare=False)
    options: PlacementOptions = PlacementOptions()

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")

    def model(self, name: str) -> ModelDemand:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model {name!r} in the problem")

    def with_rates(self, rates: Mapping[str, float]) -> PlacementProblem:
        """The same problem with some models' rates replaced (measured drift)."""
        models = tuple(
            _replace_rate(m, rates[m.name]) if m.name in rates else m for m in self.models
        )
        return PlacementProblem(models, self.cluster, self.cost_model, self.options)


def _replace_rate(m: ModelDemand, rate: float) -> ModelDemand:
    from dataclasses import replace

    return replace(m, rate=float(rate))


def kv_formats_for(
    spec: ModelSpec, qformat: str, tp_options: tuple[int, ...], tokens_per_page: int = 16
) -> dict[int, KVFormat]:
    """Per-rank KV page format for each TP degree (KV heads split across ranks, at least 1)."""
    dtype = KV_DTYPE_OF_QFORMAT.get(qformat, KVDtype.FP16)
    return {
        tp: KVFormat(spec.layers, max(1, spec.kv_heads // tp), spec.dh, dtype, tokens_per_page)
        for tp in tp_options
    }


def weight_bytes_for(spec: ModelSpec, qformat: str) -> int:
    """Weights of a dense decoder: layers at the qformat's bits, embedding and LM head at 16."""
    bits = QFORMATS[qformat].weight_bits if qformat in QFORMATS else 16.0
    return int(spec.layer_params * bits / 8 + 2 * spec.vocab * spec.hidden * 2)
