"""Rotary position embedding (HF "rotate_half" convention) with default/linear/llama3 scaling."""

from __future__ import annotations

import math

import torch

from fineserve.execution.config import RopeConfig


def inv_frequencies(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] in fp32, as transformers computes them."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (rope.theta**exponent)
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type != "llama3":
        return inv_freq
    old_len = rope.original_max_position_embeddings
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(torch.nn.Module):
    """Applies RoPE to q [N, H, D] and k [N, Hkv, D] at integer positions [N].

    cos/sin are computed in fp32 (as transformers does) and cast to the activation dtype, once
    per position into a cached table that steps index.
    """

    def __init__(self, rope: RopeConfig, head_dim: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_frequencies(rope, head_dim), persistent=False)
        # cos/sin tables for positions [0, len) per dtype, grown on demand (same values as
        # computing them per step: row p is exactly what positions == p gives).
        self._tables: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        need = int(positions.max()) + 1 if positions.numel() else 1
        table = self._tables.get(dtype)
        if table is None or table[0].shape[0] < need:
            size = max(256, 1 << (need - 1).bit_length())
            cos, sin = self._compute(torch.arange(size), dtype)
            table = (cos, sin)
            self._tables[dtype] = table
        return table

    def _compute(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """cos, sin of shape [N, 1, D] for `positions` [N]."""
        cos, sin = self._table(positions, dtype)
        cos, sin = cos.index_select(0, positions), sin.index_select(0, positions)
        return cos[:, None, :], sin[:, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
