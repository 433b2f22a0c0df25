"""Quantized weight formats and linear methods behind one interface.

The contract the model runtime relies on:

- `parse_quant_config(hf_config) -> QuantConfig` (raises `UnsupportedQuantError`).
- `is_quantized(qcfg, prefix)`: whether the linear at `prefix` is stored quantized.
- `dequantize_weight(qcfg, prefix, tensors)`: the reference dense float32 weight [out, in].
- `build_linear(qcfg, prefix, tensors, in_features, out_features, bias, dtype)`: a module mapping
  x [..., in] to [..., out] in `dtype`. Missing tensors raise `MissingTensorError` (a KeyError)
  naming the prefix and the tensor. Layouts are documented in docs/formats.md and in the
  modules awq, gptq, ct and qoq; numerics of each linear method in `linear`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fineserve.execution.quant.awq import dequantize_awq
from fineserve.execution.quant.config import (
    METHODS,
    QuantConfig,
    is_quantized,
    parse_quant_config,
)
from fineserve.execution.quant.ct import dequantize_packed, dequantize_scaled
from fineserve.execution.quant.errors import MissingTensorError, UnsupportedQuantError
from fineserve.execution.quant.gptq import dequantize_gptq
from fineserve.execution.quant.linear import DenseLinear, Fp8Linear, Int8ActLinear
from fineserve.execution.quant.qoq import dequantize_qoq, qoq_int_weight

__all__ = [
    "METHODS",
    "MissingTensorError",
    "QuantConfig",
    "UnsupportedQuantError",
    "build_linear",
    "dequantize_weight",
    "is_quantized",
    "parse_quant_config",
]


def _get(tensors: Mapping[str, torch.Tensor], prefix: str, name: str) -> torch.Tensor:
    key = f"{prefix}.{name}"
    if key not in tensors:
        raise MissingTensorError(prefix, key)
    return tensors[key]


def _opt(tensors: Mapping[str, torch.Tensor], prefix: str, name: str) -> torch.Tensor | None:
    return tensors.get(f"{prefix}.{name}")


def dequantize_weight(
    qcfg: QuantConfig, prefix: str, tensors: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Reference dense float32 weight [out, in] of the linear at `prefix`."""
    t = tensors
    if not is_quantized(qcfg, prefix):
        return _get(t, prefix, "weight").float()
    m = qcfg.method
    if m == "awq":
        return dequantize_awq(_get(t, prefix, "qweight"), _get(t, prefix, "qzeros"),
                              _get(t, prefix, "scales"))  # fmt: skip
    if m == "gptq":
        return dequantize_gptq(
            _get(t, prefix, "qweight"), _get(t, prefix, "qzeros"), _get(t, prefix, "scales"),
            _opt(t, prefix, "g_idx"), qcfg.bits, qcfg.checkpoint_format,
        )  # fmt: skip
    if m == "ct-w4a16":
        zp = _get(t, prefix, "weight_zero_point") if qcfg.zero_point else None
        return dequantize_packed(
            _get(t, prefix, "weight_packed"), _get(t, prefix, "weight_scale"),
            _get(t, prefix, "weight_shape"), qcfg.bits, zp,
        )  # fmt: skip
    if m in ("fp8", "w8a8"):
        return dequantize_scaled(_get(t, prefix, "weight"), _get(t, prefix, "weight_scale"))
    if m == "qoq":
        return dequantize_qoq(
            _get(t, prefix, "qweight"), _get(t, prefix, "s1_scales"),
            _get(t, prefix, "s2_scales"), _get(t, prefix, "s2_zeros"),
        )  # fmt: skip
    raise UnsupportedQuantError(f"quantization method {m!r} is not supported")


def _check_shape(w: torch.Tensor, prefix: str, out_features: int, in_features: int) -> None:
    if tuple(w.shape) != (out_features, in_features):
        raise ValueError(
            f"{prefix}: weight has shape {tuple(w.shape)}, expected {(out_features, in_features)}"
        )


def _act_input_scale(
    qcfg: QuantConfig, prefix: str, tensors: Mapping[str, torch.Tensor]
) -> torch.Tensor | None:
    if qcfg.act_bits is None or qcfg.act_dynamic:
        return None
    return _get(tensors, prefix, "input_scale")


def build_linear(
    qcfg: QuantConfig,
    prefix: str,
    tensors: Mapping[str, torch.Tensor],
    in_features: int,
    out_features: int,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
) -> nn.Module:
    """The linear method for `prefix`: forward(x[..., in]) -> [..., out] in `dtype`."""
    m = qcfg.method if is_quantized(qcfg, prefix) else "none"
    if m == "fp8":
        w = _get(tensors, prefix, "weight")
        _check_shape(w, prefix, out_features, in_features)
        mode = "none" if qcfg.act_bits is None else ("dynamic" if qcfg.act_dynamic else "static")
        scale = _get(tensors, prefix, "weight_scale")
        return Fp8Linear(w, scale, bias, dtype, mode, _act_input_scale(qcfg, prefix, tensors))
    if m == "w8a8" and qcfg.act_bits is not None:
        w = _get(tensors, prefix, "weight")
        _check_shape(w, prefix, out_features, in_features)
        scale = _get(tensors, prefix, "weight_scale")
        in_s = _act_input_scale(qcfg, prefix, tensors)
        return Int8ActLinear(w.to(torch.int32), scale, bias, dtype, in_s)
    if m == "qoq":
        w_int = qoq_int_weight(_get(tensors, prefix, "qweight"),
                               _get(tensors, prefix, "s2_scales"),
                               _get(tensors, prefix, "s2_zeros"))  # fmt: skip
        _check_shape(w_int, prefix, out_features, in_features)
        return Int8ActLinear(w_int, _get(tensors, prefix, "s1_scales"), bias, dtype)
    w = dequantize_weight(qcfg, prefix, tensors)
    _check_shape(w, prefix, out_features, in_features)
    return DenseLinear(w, bias, dtype)
