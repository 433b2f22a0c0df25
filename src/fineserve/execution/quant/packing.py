"""Bit packing of small unsigned integers into int32 words.

Invariant: `unpack_last(pack_last(v, bits, order), bits, order) == v` for every `v` with values in
[0, 2**bits) whose last dimension is a multiple of 32 // bits. Element `j` of each block of
`32 // bits` consecutive elements sits at bits `[bits*j, bits*(j+1))` of its word (the block is
first permuted by `order` when one is given: slot `j` holds element `order[j]`, as AWQ does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

AWQ_ORDER: tuple[int, ...] = (0, 2, 4, 6, 1, 3, 5, 7)


def _inverse(order: Sequence[int]) -> list[int]:
    inv = [0] * len(order)
    for slot, elem in enumerate(order):
        inv[elem] = slot
    return inv


def pack_last(values: torch.Tensor, bits: int, order: Sequence[int] | None = None) -> torch.Tensor:
    """Pack unsigned `values` [..., n] into int32 [..., n * bits / 32] along the last dim."""
    per = 32 // bits
    if 32 % bits or values.shape[-1] % per:
        raise ValueError(f"cannot pack {values.shape[-1]} values of {bits} bits into int32")
    v = values.to(torch.int64)
    if int(v.min()) < 0 or int(v.max()) >= (1 << bits):
        raise ValueError(f"values out of range for {bits}-bit packing")
    v = v.reshape(*v.shape[:-1], -1, per)
    if order is not None:
        v = v[..., list(order)]
    shifts = torch.arange(per, dtype=torch.int64) * bits
    words = (v << shifts).sum(dim=-1)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words)
    return words.to(torch.int32)


def unpack_last(
    packed: torch.Tensor, bits: int, order: Sequence[int] | None = None
) -> torch.Tensor:
    """Unpack int32 [..., m] into unsigned int32 values [..., m * 32 / bits]."""
    if packed.dtype != torch.int32:
        raise ValueError(f"packed tensor must be int32, got {packed.dtype}")
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int32) * bits
    v = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    if order is not None:
        v = v[..., _inverse(order)]
    return v.reshape(*packed.shape[:-1], -1)


def pack_first(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a 2-D tensor [n, k] along dim 0 into int32 [n * bits / 32, k]."""
    return pack_last(values.t(), bits).t().contiguous()


def unpack_first(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `pack_first`: int32 [m, k] -> values [m * 32 / bits, k]."""
    return unpack_last(packed.t(), bits).t().contiguous()


def group_index(in_features: int, group_size: int | None) -> torch.Tensor:
    """Group id of each input feature for contiguous groups (`None`: one group)."""
    g = in_features if group_size is None else group_size
    return torch.arange(in_features) // g
