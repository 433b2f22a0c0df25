"""QoQ W4A8 weights (QServe-style progressive group quantization), FineServe's own layout.

No standard Hugging Face layout exists for QServe checkpoints; FineServe stores, under
quant_method "qoq", for `in` inputs, `out` outputs and group size g:
- `qweight` int32 [out, in / 8]: unsigned 4-bit codes q, eight consecutive inputs per word,
  input 8c + j at bits [4j, 4j + 4) of word c (same order as compressed-tensors' packing).
- `s1_scales` fp16 [out, 1]: stage-1 per-output-channel scale to int8.
- `s2_scales` uint8 [out, in / g]: stage-2 integer group scales (>= 1).
- `s2_zeros` uint8 [out, in / g]: stage-2 integer zero points in [0, 15].
Stage 1: W8 = clamp(round(W / s1), -119, 119) with s1 = max|W[o, :]| / 119 (QServe's protective
range, so that (q - z) * s2 stays an int8 value up to rounding). Stage 2 (per group, asymmetric):
s2 = clamp(ceil((max W8 - min W8) / 15), 1, 255), z = clamp(round(-min W8 / s2), 0, 15),
q = clamp(round(W8 / s2) + z, 0, 15).
Dequantization: W[o, i] = s1[o] * (q[o, i] - z[o, i // g]) * s2[o, i // g]; the integer part
(q - z) * s2 is what the W4A8 GEMM multiplies with int8 activations.
"""

from __future__ import annotations

import torch

from fineserve.execution.quant.packing import pack_last, unpack_last

PROTECT = 119


def quantize_qoq(weight: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """Progressive quantization of [out, in] into QoQ tensors (names without prefix)."""
    w = weight.float()
    out_f, in_f = w.shape
    if in_f % group_size or in_f % 8:
        raise ValueError(f"QoQ cannot pack shape {tuple(w.shape)} with group {group_size}")
    s1 = (w.abs().amax(dim=1, keepdim=True) / PROTECT).clamp(min=1e-8).half().float()
    w8 = torch.clamp(torch.round(w / s1), -PROTECT, PROTECT)
    wg = w8.reshape(out_f, in_f // group_size, group_size)
    lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
    s2 = torch.clamp(torch.ceil((hi - lo) / 15), 1, 255)
    z = torch.clamp(torch.round(-lo / s2), 0, 15)
    gi = torch.arange(in_f) // group_size
    q = torch.clamp(torch.round(w8 / s2[:, gi]) + z[:, gi], 0, 15).to(torch.int32)
    return {
        "qweight": pack_last(q, 4),
        "s1_scales": s1.half(),
        "s2_scales": s2.to(torch.uint8),
        "s2_zeros": z.to(torch.uint8),
    }


def qoq_int_weight(
    qweight: torch.Tensor, s2_scales: torch.Tensor, s2_zeros: torch.Tensor
) -> torch.Tensor:
    """The integer weight (q - z) * s2 as int32 [out, in] (what multiplies int8 activations)."""
    q = unpack_last(qweight, 4)
    out_f, in_f = q.shape
    n_groups = s2_scales.shape[1]
    if s2_scales.shape != (out_f, n_groups) or s2_zeros.shape != s2_scales.shape:
        raise ValueError(
            f"inconsistent QoQ shapes: qweight {tuple(qweight.shape)}, "
            f"s2_scales {tuple(s2_scales.shape)}, s2_zeros {tuple(s2_zeros.shape)}"
        )
    if in_f % n_groups:
        raise ValueError(f"{n_groups} groups do not divide {in_f} inputs")
    gi = torch.arange(in_f) // (in_f // n_groups)
    return (q - s2_zeros.to(torch.int32)[:, gi]) * s2_scales.to(torch.int32)[:, gi]


def dequantize_qoq(
    qweight: torch.Tensor, s1_scales: torch.Tensor, s2_scales: torch.Tensor, s2_zeros: torch.Tensor
) -> torch.Tensor:
    """Dense float32 weight [out, in] from QoQ tensors."""
    w_int = qoq_int_weight(qweight, s2_scales, s2_zeros)
    return w_int.float() * s1_scales.float().reshape(-1, 1)
