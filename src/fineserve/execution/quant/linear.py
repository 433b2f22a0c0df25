"""Linear methods: each turns x [..., in] into y [..., out] in the layer's dtype.

- `DenseLinear`: y = x W^T + b in `dtype` (fp32/fp16/bf16). Also used for W4A16 formats, whose
  weight is dequantized once at load and cached in `dtype` (the CPU reference: dequantize, then
  matmul; on CPU this is faster than unpacking every step, at the cost of dense weight memory).
- `Fp8Linear`: FP8 E4M3 weights with scale s_w ([out] or scalar). Dynamic per-token activation
  quantization: s_x = max|x_t| / 448, x_q = fp8(x / s_x); y = (x_q W_q^T) * s_x * s_w + b,
  accumulated in float32 (like a scaled FP8 GEMM). Static: s_x is the checkpoint's
  input_scale. Weight-only (no activation scheme): y = x (W_q s_w)^T + b.
- `Int8ActLinear`: integer weights W_i (int8 for W8A8, (q - z) * s2 for QoQ) with per-channel
  scale s_w. Activations: per-token dynamic (s_x = max|x_t| / 127) or static, symmetric,
  x_q = clamp(round(x / s_x), -128, 127). The integer product x_q W_i^T is computed exactly
  (float32 when every partial sum stays below 2**24, else float64), then y = acc * s_x * s_w + b.
Invariant: every module returns a tensor in its `dtype` with the input's leading dims.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8_MAX = 448.0


class DenseLinear(nn.Module):
    """y = x W^T + b in `dtype`; `weight` is [out, in]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.weight = nn.Parameter(weight.to(dtype).contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.dtype), self.weight, self.bias)


def _bias_out(y: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    if bias is not None:
        y = y + bias.float()
    return y.to(dtype)


class Fp8Linear(nn.Module):
    """FP8 E4M3 weights; activations fp8 per-token dynamic, fp8 static, or unquantized."""

    def __init__(
        self,
        weight_fp8: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
        act_mode: str,
        input_scale: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if act_mode not in ("dynamic", "static", "none"):
            raise ValueError(f"act_mode must be dynamic, static or none, got {act_mode!r}")
        self.dtype, self.act_mode = dtype, act_mode
        s = weight_scale.float().reshape(-1)
        self.register_buffer("w_q", weight_fp8.float().contiguous())
        self.register_buffer("w_scale", s)
        self.register_buffer("bias", None if bias is None else bias.float())
        in_s = None if input_scale is None else input_scale.float().reshape(())
        self.register_buffer("input_scale", in_s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        if self.act_mode == "none":
            y = xf @ (self.w_q * self.w_scale.unsqueeze(-1)).t()
            return _bias_out(y, self.bias, self.dtype)
        if self.act_mode == "dynamic":
            s_x = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX
        else:
            s_x = self.input_scale
        x_q = (xf / s_x).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()
        y = (x_q @ self.w_q.t()) * s_x * self.w_scale
        return _bias_out(y, self.bias, self.dtype)


class Int8ActLinear(nn.Module):
    """Integer weights [out, in] times int8-quantized activations, accumulated exactly."""

    def __init__(
        self,
        weight_int: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        dtype: torch.dtype,
        input_scale: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.dtype = dtype
        bound = weight_int.shape[1] * 128 * int(weight_int.abs().max())
        acc = torch.float32 if bound < 2**24 else torch.float64
        self.acc_dtype = acc
        self.register_buffer("w_int", weight_int.to(acc).contiguous())
        self.register_buffer("w_scale", weight_scale.float().reshape(-1))
        self.register_buffer("bias", None if bias is None else bias.float())
        in_s = None if input_scale is None else input_scale.float().reshape(())
        self.register_buffer("input_scale", in_s)

    def quantize_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_q as integers in float, s_x) for symmetric int8, per token or static."""
        xf = x.float()
        if self.input_scale is None:
            s_x = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127
        else:
            s_x = self.input_scale
        return torch.clamp(torch.round(xf / s_x), -128, 127), s_x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q, s_x = self.quantize_input(x)
        acc = x_q.to(self.acc_dtype) @ self.w_int.t()
        y = acc.float() * s_x * self.w_scale
        return _bias_out(y, self.bias, self.dtype)
