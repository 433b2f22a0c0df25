"""AWQ W4A16, GEMM version, as AutoAWQ writes it.

On disk, for a linear layer with `in` inputs, `out` outputs and group size `g` (g divides in):
- `qweight` int32 [in, out/8]: row i holds the 4-bit codes q[i, :] (input-major), eight output
  columns per word in AWQ's interleaved order: slot j of word c (bits [4j, 4j + 4)) holds
  column 8c + (0, 2, 4, 6, 1, 3, 5, 7)[j].
- `qzeros` int32 [in/g, out/8]: zero points z (0..15), packed the same way.
- `scales` fp16 [in/g, out].
Dequantization: W[o, i] = (q[i, o] - z[i // g, o]) * s[i // g, o].
Quantization (asymmetric min/max per group, as AutoAWQ's pseudo-quantizer):
s = (max - min) / 15 (rounded to fp16), z = clamp(round(-min / s), 0, 15),
q = clamp(round(w / s) + z, 0, 15).
"""

from __future__ import annotations

import torch

from fineserve.execution.quant.packing import AWQ_ORDER, pack_last, unpack_last


def _group_minmax(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    out_f, in_f = w.shape
    wg = w.reshape(out_f, in_f // group, group)
    return wg.amin(dim=-1), wg.amax(dim=-1)


def quantize_awq(weight: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """Quantize a dense weight [out, in] into AWQ GEMM tensors (names without prefix)."""
    w = weight.float()
    out_f, in_f = w.shape
    if in_f % group_size or out_f % 8:
        raise ValueError(f"AWQ needs in % group == 0 and out % 8 == 0, got {tuple(w.shape)}")
    lo, hi = _group_minmax(w, group_size)
    scales = ((hi - lo).clamp(min=1e-5) / 15).half().float()
    zeros = (-torch.round(lo / scales)).clamp(0, 15)
    gi = torch.arange(in_f) // group_size
    q = torch.clamp(torch.round(w / scales[:, gi]) + zeros[:, gi], 0, 15).to(torch.int32)
    return {
        "qweight": pack_last(q.t().contiguous(), 4, AWQ_ORDER),
        "qzeros": pack_last(zeros.t().contiguous().to(torch.int32), 4, AWQ_ORDER),
        "scales": scales.t().contiguous().half(),
    }


def dequantize_awq(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor
) -> torch.Tensor:
    """Dense float32 weight [out, in] from AWQ GEMM tensors; group size = in / scales.shape[0]."""
    q = unpack_last(qweight, 4, AWQ_ORDER)
    z = unpack_last(qzeros, 4, AWQ_ORDER)
    in_f, out_f = q.shape
    n_groups = scales.shape[0]
    if in_f % n_groups or z.shape != (n_groups, out_f) or scales.shape[1] != out_f:
        raise ValueError(
            f"inconsistent AWQ shapes: qweight {tuple(qweight.shape)}, "
            f"qzeros {tuple(qzeros.shape)}, scales {tuple(scales.shape)}"
        )
    gi = torch.arange(in_f) // (in_f // n_groups)
    w_t = (q - z[gi]).float() * scales.float()[gi]
    return w_t.t().contiguous()
