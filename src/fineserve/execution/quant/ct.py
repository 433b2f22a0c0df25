"""compressed-tensors weight formats as llmcompressor writes them.

pack-quantized (W4A16, also W8A16), strategy "group" (scale [out, in/g]) or "channel"
(scale [out, 1]):
- `weight_packed` int32 [out, in * b / 32]: signed codes q in [-2**(b-1), 2**(b-1)) stored as
  q + 2**(b-1), element j of each run of 32/b inputs at bits [b*j, b*(j+1)) (dense packing
  along inputs).
- `weight_scale` [out, G] in the model dtype; `weight_shape` int64 [2] = [out, in].
- `weight_zero_point` only when asymmetric: signed zero points packed along *outputs*
  (int32 [out * b / 32, G], same +2**(b-1) offset).
Dequantization: W[o, i] = (q[o, i] - zp[o, i // g]) * s[o, i // g].
Symmetric quantization: s = max|w| / ((2**b - 1) / 2), q = clamp(round(w / s), qmin, qmax).

float-quantized (FP8 E4M3): `weight` float8_e4m3fn [out, in], `weight_scale` [out, 1]
(channel) or [1] (tensor) in the model dtype (llmcompressor 0.14 writes bf16 for a bf16 model);
W = weight * scale, s = max|w| / 448. A static FP8 KV cache adds `self_attn.k_scale` and
`self_attn.v_scale` ([1], model dtype) per layer.
int-quantized (INT8): `weight` int8 [out, in], `weight_scale` [out, 1]; W = weight * scale,
s = max|w| / 127.
"""

from __future__ import annotations

import torch

from fineserve.execution.quant.packing import pack_first, pack_last, unpack_first, unpack_last

FP8_MAX = 448.0


def _group_view(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    out_f, in_f = w.shape
    g = in_f if group_size is None else group_size
    if in_f % g:
        raise ValueError(f"group size {g} does not divide {in_f} input features")
    return w.reshape(out_f, in_f // g, g)


def quantize_packed(
    weight: torch.Tensor, bits: int, group_size: int | None, scale_dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Symmetric int-b quantization of [out, in] into pack-quantized tensors."""
    w = weight.float()
    half = (1 << bits) - 1
    amax = _group_view(w, group_size).abs().amax(dim=-1)
    scales = (amax / (half / 2)).clamp(min=1e-8).to(scale_dtype).float()
    gi = torch.arange(w.shape[1]) // (w.shape[1] // scales.shape[1])
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = torch.clamp(torch.round(w / scales[:, gi]), qmin, qmax).to(torch.int32)
    return {
        "weight_packed": pack_last(q - qmin, bits),
        "weight_scale": scales.to(scale_dtype),
        "weight_shape": torch.tensor(list(w.shape), dtype=torch.int64),
    }


def pack_zero_points(zero_points: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed zero points [out, G] -> int32 [out * b / 32, G], packed along outputs."""
    return pack_first(zero_points.to(torch.int32) + (1 << (bits - 1)), bits)


def dequantize_packed(
    packed: torch.Tensor,
    scale: torch.Tensor,
    shape: torch.Tensor | tuple[int, int],
    bits: int,
    zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense float32 [out, in] from pack-quantized tensors (zero_point packed along outputs)."""
    out_f, in_f = (int(x) for x in shape)
    offset = 1 << (bits - 1)
    q = unpack_last(packed, bits)[:, :in_f] - offset
    if q.shape != (out_f, in_f) or scale.shape[0] != out_f or in_f % scale.shape[1]:
        raise ValueError(
            f"inconsistent pack-quantized shapes: packed {tuple(packed.shape)}, "
            f"scale {tuple(scale.shape)}, weight_shape {(out_f, in_f)}"
        )
    gi = torch.arange(in_f) // (in_f // scale.shape[1])
    codes = q.float()
    if zero_point is not None:
        zp = zero_point
        if zp.dtype == torch.int32 and zp.shape[0] != out_f:
            zp = unpack_first(zp, bits)[:out_f] - offset
        codes = codes - zp.float()[:, gi]
    return codes * scale.float()[:, gi]


def quantize_fp8(
    weight: torch.Tensor, strategy: str, scale_dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """FP8 E4M3 weight with a per-channel ([out, 1]) or per-tensor ([1]) scale in `scale_dtype`."""
    w = weight.float()
    if strategy == "channel":
        amax = w.abs().amax(dim=1, keepdim=True)
    elif strategy == "tensor":
        amax = w.abs().amax().reshape(1)
    else:
        raise ValueError(f"FP8 weight strategy must be channel or tensor, got {strategy!r}")
    scale = (amax / FP8_MAX).clamp(min=1e-12).to(scale_dtype).float()
    q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return {"weight": q, "weight_scale": scale.to(scale_dtype)}


def quantize_int8(weight: torch.Tensor, scale_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Symmetric per-channel INT8 weight with scale [out, 1]."""
    w = weight.float()
    scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-8).to(scale_dtype).float()
    q = torch.clamp(torch.round(w / scale), -128, 127).to(torch.int8)
    return {"weight": q, "weight_scale": scale.to(scale_dtype)}


def dequantize_scaled(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """W = weight * scale for float-/int-quantized weights; scale [out, 1], [1] or []."""
    s = scale.float()
    if s.dim() == 2 and s.shape[1] not in (1, weight.shape[1]):
        gi = torch.arange(weight.shape[1]) // (weight.shape[1] // s.shape[1])
        s = s[:, gi]
    elif s.dim() == 1 and s.numel() == weight.shape[0] and s.numel() != 1:
        s = s.unsqueeze(1)
    return weight.float() * s
