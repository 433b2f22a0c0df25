"""Analytic roofline cost model for shapes without a profile.

Per step and per GPU of a TP group:

    compute = (2*P_layers*T + 2*V*H*emit + 4*L*Hq*Dh*pairs) / tp / (peak * eff_c)
    memory  = (weight_bytes + kv_bytes_read + kv_bytes_written) / tp / (bandwidth * eff_m)
    time    = max(compute, memory) + overhead + tp_comm

with T tokens in the step, ``emit`` sequences producing a logit row, ``pairs`` attention
(query, key) pairs (causal prefill pairs plus every decode context), and tp_comm two all-reduces
per layer over NVLink (latency + ring bytes). FP8/W8A8/QoQ run their GEMMs at 2x the BF16 peak.
``eff_c``, ``eff_m`` and ``overhead`` are calibrated per qformat against the H100 profile rows
(solo rows: batch prefill and mean TPOT) by a grid search minimising mean |log(pred/measured)|;
``calibrate_roofline`` returns the figures and the fit error, which the committed
``data/h100_fit.json`` records (tests check the stated bound).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fineserve.costmodel.base import BatchShape, CostModelHelpers, InstanceKey
from fineserve.costmodel.profile import ProfileRow


@dataclass(frozen=True)
class ModelSpec:
    """Transformer dimensions needed for FLOPs and bytes."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int = 0  # 0 -> hidden // heads

    @property
    def dh(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def layer_params(self) -> int:
        attn = self.hidden * self.dh * (2 * self.heads + 2 * self.kv_heads)
        return self.layers * (attn + 3 * self.hidden * self.intermediate)

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any]) -> ModelSpec:
        """From a Hugging Face ``config.json`` dict (Llama/Qwen/Mistral style)."""
        heads = int(cfg["num_attention_heads"])
        return cls(
            layers=int(cfg["num_hidden_layers"]),
            hidden=int(cfg["hidden_size"]),
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads", heads)),
            intermediate=int(cfg["intermediate_size"]),
            vocab=int(cfg["vocab_size"]),
            head_dim=int(cfg.get("head_dim") or 0),
        )


@dataclass(frozen=True)
class QFormatSpec:
    weight_bits: float  # including group scales
    kv_bits: float
    compute_mult: float  # GEMM peak relative to BF16 dense


@dataclass(frozen=True)
class GpuSpec:
    name: str = "h100"
    bf16_flops: float = 989e12
    mem_bw: float = 3.35e12
    link_bw: float = 450e9  # NVLink per direction
    link_latency_s: float = 8e-6


@dataclass(frozen=True)
class Calibration:
    eff_compute: float = 0.5
    eff_memory: float = 0.7
    overhead_s: float = 0.004


KNOWN_MODELS: Mapping[str, ModelSpec] = {
    "llama-3.1-8b": ModelSpec(32, 4096, 32, 8, 14336, 128256),
    "llama-3-8b": ModelSpec(32, 4096, 32, 8, 14336, 128256),
    "qwen-3-32b": ModelSpec(64, 5120, 64, 8, 25600, 151936, head_dim=128),
    "llama-3.1-70b": ModelSpec(80, 8192, 64, 8, 28672, 128256),
}
QFORMATS: Mapping[str, QFormatSpec] = {
    "fp32": QFormatSpec(32, 32, 0.5),
    "fp16": QFormatSpec(16, 16, 1.0),
    "bf16": QFormatSpec(16, 16, 1.0),
    "awq": QFormatSpec(4.25, 16, 1.0),
    "gptq": QFormatSpec(4.25, 16, 1.0),
    "fp8": QFormatSpec(8, 8, 2.0),
    "w8a8": QFormatSpec(8, 16, 2.0),
    "qoq": QFormatSpec(4.25, 4.5, 2.0),
    "int8kv": QFormatSpec(16, 8.5, 1.0),
}


def _terms(
    spec: ModelSpec, q: QFormatSpec, gpu: GpuSpec, tp: int, b: BatchShape
) -> tuple[float, float, float]:
    """(compute seconds at eff 1, memory seconds at eff 1, TP communication seconds)."""
    tokens = b.prefill_tokens + b.num_decode
    emit = len(b.prefill) + b.num_decode
    pairs = b.attention_pairs + b.decode_context_sum
    flops = 2.0 * spec.layer_params * tokens + 2.0 * spec.vocab * spec.hidden * emit
    flops += 4.0 * spec.layers * spec.heads * spec.dh * pairs
    kv_tok = spec.layers * 2 * spec.kv_heads * spec.dh * q.kv_bits / 8.0
    kv_read = kv_tok * (b.decode_context_sum + sum(c0 for _, c0 in b.prefill))
    wbytes = spec.layer_params * q.weight_bits / 8.0 + spec.vocab * spec.hidden * 2.0
    mem = (wbytes + kv_read + kv_tok * tokens) / tp
    comp = flops / tp / (gpu.bf16_flops * q.compute_mult)
    comm = 0.0
    if tp > 1:
        ring = 2.0 * (tp - 1) / tp * tokens * spec.hidden * 2.0 / gpu.link_bw
        comm = 2 * spec.layers * (gpu.link_latency_s + ring)
    return comp, mem / gpu.mem_bw, comm


class RooflineCostModel(CostModelHelpers):
    """max(compute, memory) + overhead (+ TP all-reduces), calibrated per qformat."""

    def __init__(
        self,
        calibration: Mapping[str, Calibration] | None = None,
        models: Mapping[str, ModelSpec] | None = None,
        gpu: GpuSpec | None = None,
    ) -> None:
        self._cal = dict(calibration or {})
        self._models = {**KNOWN_MODELS, **(models or {})}
        self.gpu = gpu or GpuSpec()

    @classmethod
    def from_json(
        cls, path: Path, models: Mapping[str, ModelSpec] | None = None
    ) -> RooflineCostModel:
        doc = json.loads(Path(path).read_text())["roofline"]
        cal = {q: Calibration(**v) for q, v in doc["per_qformat"].items()}
        return cls(cal, models)

    def calibrations(self) -> dict[str, Calibration]:
        return dict(self._cal)

    def calibration(self, qformat: str) -> Calibration:
        if qformat in self._cal:
            return self._cal[qformat]
        alias = {"bf16": "fp16", "gptq": "awq", "w8a8": "fp8", "fp32": "fp16", "int8kv": "fp16"}
        return self._cal.get(alias.get(qformat, ""), Calibration())

    def supports(self, key: InstanceKey) -> bool:
        return key.model in self._models and key.qformat in QFORMATS and key.tp >= 1

    def step_time(self, key: InstanceKey, batch: BatchShape) -> float:
        if batch.is_empty:
            return 0.0
        if not self.supports(key):
            raise KeyError(f"roofline has no dimensions for {key}")
        comp, mem, comm = _terms(
            self._models[key.model], QFORMATS[key.qformat], self.gpu, key.tp, batch
        )
        cal = self.calibration(key.qformat)
        return max(comp / cal.eff_compute, mem / cal.eff_memory) + cal.overhead_s + comm


def _row_batches(r: ProfileRow) -> tuple[BatchShape, BatchShape]:
    pre = BatchShape(prefill=((r.input_len, 0),) * r.batch_size)
    ctx = round(r.mean_decode_context)
    return pre, BatchShape(decode_context=(ctx,) * r.batch_size)


def calibrate_roofline(rows: Sequence[ProfileRow], gpu: GpuSpec | None = None) -> dict[str, Any]:
    """Grid-search (eff_c, eff_m, overhead) per qformat on solo rows of known models."""
    gpu = gpu or GpuSpec()
    groups: dict[str, list[tuple[float, float, float, float]]] = {}
    for r in rows:
        if r.mps_percentage < 100 or r.key.model not in KNOWN_MODELS:
            continue
        spec, q = KNOWN_MODELS[r.key.model], QFORMATS[r.key.qformat]
        for shape, meas in zip(_row_batches(r), (r.prefill_time, r.tpot), strict=True):
            if meas > 0:
                groups.setdefault(r.key.qformat, []).append(
                    (*_terms(spec, q, gpu, r.key.tp, shape), meas)
                )
    effs = np.geomspace(0.05, 1.0, 30)
    overheads = np.array([0.0, 0.5, 1, 2, 3, 4, 6, 8, 10, 12, 15, 20]) * 1e-3
    per_q: dict[str, dict[str, float]] = {}
    all_err: list[np.ndarray] = []
    for qf, pts in sorted(groups.items()):
        arr = np.array(pts)
        best = (math.inf, 0.5, 0.5, 0.0)
        for ec, em, oh in itertools.product(effs, effs, overheads):
            pred = np.maximum(arr[:, 0] / ec, arr[:, 1] / em) + oh + arr[:, 2]
            score = float(np.mean(np.abs(np.log(pred / arr[:, 3]))))
            if score < best[0]:
                best = (score, float(ec), float(em), float(oh))
        _, ec, em, oh = best
        pred = np.maximum(arr[:, 0] / ec, arr[:, 1] / em) + oh + arr[:, 2]
        all_err.append(np.abs(np.log(pred / arr[:, 3])))
        per_q[qf] = {"eff_compute": round(ec, 4), "eff_memory": round(em, 4), "overhead_s": oh}
    errs = np.concatenate(all_err) if all_err else np.zeros(1)
    return {
        "gpu": gpu.name,
        "per_qformat": per_q,
        "fit_error": {
            "points": int(errs.size),
            "mean_abs_log": round(float(errs.mean()), 4),
            "median_factor": round(float(np.exp(np.median(errs))), 4),
            "p90_factor": round(float(np.exp(np.percentile(errs, 90))), 4),
            "max_factor": round(float(np.exp(errs.max())), 4),
        },
    }
