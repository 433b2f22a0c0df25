"""GPTQ W4A16 (also 2 and 8 bits) as AutoGPTQ / gptqmodel write it.

On disk, for `in` inputs, `out` outputs, `b` bits, `p = 32 / b` codes per word, `G` groups:
- `qweight` int32 [in / p, out]: word r of column o holds q[p*r + j, o] at bits [b*j, b*(j+1)).
- `qzeros` int32 [G, out / p]: zero points packed along outputs, same bit order.
- `scales` fp16 [G, out].
- `g_idx` int32 [in]: group of each input feature. With desc_act=false it is i // g; with
  desc_act=true groups are formed in activation order (a permutation), rows of qweight stay in
  the original input order and g_idx says which group's scale each row uses.
Zero storage: checkpoint_format "gptq" (v1) stores z - 1 (the classic AutoGPTQ convention; a
kernel adds 1 back without masking, so a true zero of 0 cannot be represented: our quantizer
clamps z >= 1 for asymmetric v1, see docs/formats.md); "gptq_v2" stores z itself.
Symmetric quantization uses z = 2**(b-1) and s = 2 * max|w| / (2**b - 1) per group.
Dequantization: W[o, i] = s[g_idx[i], o] * (q[i, o] - z[g_idx[i], o]).
"""

from __future__ import annotations

import torch

from fineserve.execution.quant.packing import pack_first, pack_last, unpack_first, unpack_last


def gptq_g_idx(in_features: int, group_size: int, perm: torch.Tensor | None) -> torch.Tensor:
    """g_idx for contiguous groups (perm None) or groups taken in `perm` order (desc_act)."""
    order = torch.arange(in_features) if perm is None else perm
    g_idx = torch.empty(in_features, dtype=torch.int32)
    g_idx[order] = (torch.arange(in_features) // group_size).to(torch.int32)
    return g_idx


def _qparams(
    w: torch.Tensor, g_idx: torch.Tensor, n_groups: int, bits: int, sym: bool, fmt: str
) -> tuple[torch.Tensor, torch.Tensor]:
    maxq = (1 << bits) - 1
    lo = torch.stack([w[:, g_idx == g].amin(dim=1) for g in range(n_groups)], dim=1)
    hi = torch.stack([w[:, g_idx == g].amax(dim=1) for g in range(n_groups)], dim=1)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if sym:
        amax = torch.maximum(lo.abs(), hi)
        scales = (2 * amax / maxq).clamp(min=1e-8).half().float()
        zeros = torch.full_like(scales, float((maxq + 1) // 2))
    else:
        scales = ((hi - lo) / maxq).clamp(min=1e-8).half().float()
        zeros = torch.round(-lo / scales).clamp(1 if fmt == "gptq" else 0, maxq)
    return scales, zeros


def quantize_gptq(
    weight: torch.Tensor,
    group_size: int,
    bits: int = 4,
    sym: bool = True,
    perm: torch.Tensor | None = None,
    checkpoint_format: str = "gptq",
) -> dict[str, torch.Tensor]:
    """Round-to-nearest GPTQ-format quantization of [out, in] (names without prefix).

    `perm` (a permutation of the inputs) emulates desc_act=true. The codes are plain RTN: the
    layout, not GPTQ's error-compensating solver, is what this reproduces.
    """
    w = weight.float()
    out_f, in_f = w.shape
    per = 32 // bits
    if in_f % group_size or in_f % per or out_f % per:
        raise ValueError(f"GPTQ cannot pack shape {tuple(w.shape)} with group {group_size}")
    g_idx = gptq_g_idx(in_f, group_size, perm)
    scales, zeros = _qparams(w, g_idx.long(), in_f // group_size, bits, sym, checkpoint_format)
    gi = g_idx.long()
    q = torch.clamp(torch.round(w / scales[:, gi]) + zeros[:, gi], 0, (1 << bits) - 1)
    stored = zeros - 1 if checkpoint_format == "gptq" else zeros
    return {
        "qweight": pack_first(q.t().to(torch.int32), bits),
        "qzeros": pack_last(stored.t().contiguous().to(torch.int32), bits),
        "scales": scales.t().contiguous().half(),
        "g_idx": g_idx,
    }


def dequantize_gptq(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor | None,
    bits: int,
    checkpoint_format: str = "gptq",
) -> torch.Tensor:
    """Dense float32 weight [out, in] from GPTQ tensors (g_idx None: contiguous groups)."""
    q = unpack_first(qweight, bits)
    z = unpack_last(qzeros, bits)
    if checkpoint_format == "gptq":
        z = z + 1
    in_f, out_f = q.shape
    n_groups = scales.shape[0]
    if z.shape != (n_groups, out_f) or scales.shape[1] != out_f or in_f % n_groups:
        raise ValueError(
            f"inconsistent GPTQ shapes: qweight {tuple(qweight.shape)}, "
            f"qzeros {tuple(qzeros.shape)}, scales {tuple(scales.shape)}"
        )
    if g_idx is None:
        gi = torch.arange(in_f) // (in_f // n_groups)
    else:
        gi = g_idx.long()
        if gi.shape != (in_f,) or int(gi.min()) < 0 or int(gi.max()) >= n_groups:
            raise ValueError(f"g_idx of shape {tuple(g_idx.shape)} does not fit {in_f} inputs")
    w_t = (q - z[gi]).float() * scales.float()[gi]
    return w_t.t().contiguous()
