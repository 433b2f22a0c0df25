"""Quantize a dense state dict into a checkpoint of one on-disk format (used by make-model).

Only the decoder's linear layers (q/k/v/o and gate/up/down projections) are quantized;
embeddings, norms, biases and lm_head stay in the base dtype, as the real tools leave them.
Invariant: `parse_quant_config({"quantization_config": qc})` of the returned config reads back a
`QuantConfig` whose `dequantize_weight` reproduces exactly the values these tensors encode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fineserve.execution.quant.awq import quantize_awq
from fineserve.execution.quant.ct import quantize_fp8, quantize_int8, quantize_packed
from fineserve.execution.quant.gptq import quantize_gptq
from fineserve.execution.quant.qoq import quantize_qoq

LINEAR_LEAVES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANT_PRECISIONS = ("awq", "gptq", "ct-w4a16", "fp8", "w8a8", "qoq")
BASE_DTYPE = {
    "awq": torch.float16,
    "gptq": torch.float16,
    "qoq": torch.float16,
    "ct-w4a16": torch.bfloat16,
    "fp8": torch.bfloat16,
    "w8a8": torch.bfloat16,
}


@dataclass(frozen=True)
class ExportOptions:
    """Knobs of the quantized export; `group_size` is an upper bound (see `model_group_size`)."""

    group_size: int = 128
    desc_act: bool = False
    weight_strategy: str = "channel"
    kv_cache: bool = True
    seed: int = 0


def linear_prefixes(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Module prefixes of the decoder linears in `state_dict`, in sorted order."""
    out = []
    for name in sorted(state_dict):
        if name.endswith(".weight") and ".layers." in name:
            prefix = name[: -len(".weight")]
            if prefix.rsplit(".", 1)[-1] in LINEAR_LEAVES:
                out.append(prefix)
    return out


def model_group_size(state_dict: dict[str, torch.Tensor], requested: int) -> int:
    """One group size for the whole model: min(requested, smallest in_features).

    Real configs carry a single group_size, so it must divide every quantized layer's inputs.
    """
    ins = {state_dict[f"{p}.weight"].shape[1] for p in linear_prefixes(state_dict)}
    g = min([requested, *ins])
    if any(i % g for i in ins):
        raise ValueError(f"group size {g} does not divide all input sizes {sorted(ins)}")
    return g


def _ct_config(fmt: str, weights: dict[str, Any], acts: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"dynamic": False, "observer": "minmax", "actorder": None, **weights},
                "input_activations": acts,
                "output_activations": None,
                "format": fmt,
            }
        },
        "ignore": ["lm_head"],
        "kv_cache_scheme": None,
        "sparsity_config": {},
        "global_compression_ratio": None,
    }


def quant_config_dict(precision: str, group: int, opts: ExportOptions) -> dict[str, Any]:
    """The `quantization_config` a real tool would write for `precision`."""
    if precision == "awq":
        return {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True,
                "version": "gemm", "modules_to_not_convert": None}  # fmt: skip
    if precision == "gptq":
        return {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": opts.desc_act,
                "sym": True, "static_groups": False, "true_sequential": True,
                "damp_percent": 0.01, "checkpoint_format": "gptq", "lm_head": False,
                "pack_dtype": "int32", "meta": {"quantizer": ["fineserve make-model"]}}  # fmt: skip
    sym = {"symmetric": True}
    if precision == "ct-w4a16":
        w = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": group, **sym}
        return _ct_config("pack-quantized", w, None)
    act = {"num_bits": 8, "strategy": "token", "dynamic": True, "observer": None, **sym}
    if precision == "fp8":
        w = {"num_bits": 8, "type": "float", "strategy": opts.weight_strategy, **sym}
        qc = _ct_config("float-quantized", w, {**act, "type": "float"})
        if opts.kv_cache:
            qc["kv_cache_scheme"] = {"num_bits": 8, "type": "float", "strategy": "tensor",
                                     "dynamic": False, "symmetric": True}  # fmt: skip
        return qc
    if precision == "w8a8":
        w = {"num_bits": 8, "type": "int", "strategy": "channel", **sym}
        return _ct_config("int-quantized", w, {**act, "type": "int"})
    if precision == "qoq":
        kv = {"dtype": "int4", "granularity": "per-token-head", "zero_point": True,
              "scale_dtype": "float16"}  # fmt: skip
        return {"quant_method": "qoq", "bits": 4, "group_size": group, "act_bits": 8,
                "act_strategy": "token", "weight_scheme": "progressive", "s1_protect_range": 119,
                "kv_cache": kv if opts.kv_cache else None, "ignore": ["lm_head"]}  # fmt: skip
    raise ValueError(f"unknown quantized precision {precision!r}")


def _quantize_one(
    w: torch.Tensor, precision: str, group: int, opts: ExportOptions, index: int
) -> dict[str, torch.Tensor]:
    base = BASE_DTYPE[precision]
    if precision == "awq":
        return quantize_awq(w, group)
    if precision == "gptq":
        perm = None
        if opts.desc_act:
            gen = torch.Generator().manual_seed(opts.seed * 7919 + index)
            perm = torch.randperm(w.shape[1], generator=gen)
        return quantize_gptq(w, group, perm=perm)
    if precision == "ct-w4a16":
        return quantize_packed(w, 4, group, base)
    if precision == "fp8":
        return quantize_fp8(w, opts.weight_strategy, base)
    if precision == "w8a8":
        return quantize_int8(w, base)
    return quantize_qoq(w, group)


def export_quantized(
    state_dict: dict[str, torch.Tensor], precision: str, opts: ExportOptions
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors to save, quantization_config) for a dense float32 `state_dict`."""
    if precision not in QUANT_PRECISIONS:
        raise ValueError(f"unknown quantized precision {precision!r}")
    group = model_group_size(state_dict, opts.group_size)
    base = BASE_DTYPE[precision]
    prefixes = set(linear_prefixes(state_dict))
    out: dict[str, torch.Tensor] = {}
    for name, t in sorted(state_dict.items()):
        prefix = name.rsplit(".", 1)[0]
        if prefix in prefixes and name.endswith(".weight"):
            packed = _quantize_one(t, precision, group, opts, len(out))
            out.update({f"{prefix}.{k}": v.contiguous() for k, v in packed.items()})
        else:
            out[name] = t.to(base).contiguous()
    return out, quant_config_dict(precision, group, opts)
