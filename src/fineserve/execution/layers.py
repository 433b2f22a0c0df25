"""Decoder building blocks: RMSNorm, fused/split projections, attention block, MLP block.

Every block takes a flattened batch of tokens [N, hidden] (prefill chunks and decode tokens of
many sequences, concatenated); per-sequence structure travels in `ForwardContext`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from fineserve.execution.rope import apply_rotary

if TYPE_CHECKING:
    from fineserve.execution.attention import AttentionBackend
    from fineserve.execution.batch import AttentionMetadata
    from fineserve.execution.kv_views import KVCache


@dataclass
class ForwardContext:
    """Everything one forward step shares across layers (built once per step)."""

    meta: AttentionMetadata
    kv: KVCache
    backend: AttentionBackend
    cos: torch.Tensor  # [N, 1, head_dim]
    sin: torch.Tensor


class RMSNorm(nn.Module):
    """transformers' RMSNorm numerics: normalise in fp32, cast back, then scale."""

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.float32 and self.weight.dtype == torch.float32:
            # One fused op; in fp32 it computes exactly the steps below.
            return nn.functional.rms_norm(x, self.weight.shape, self.weight, self.eps)
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class SplitProjection(nn.Module):
    """Several projections of the same input; `fused` is one linear whose output is split."""

    def __init__(self, parts: list[nn.Module] | None, fused: nn.Module | None, sizes: list[int]):
        super().__init__()
        self.parts = nn.ModuleList(parts or [])
        self.fused = fused
        self.sizes = sizes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.fused is not None:
            return torch.split(self.fused(x), self.sizes, dim=-1)
        return tuple(p(x) for p in self.parts)


class AttentionBlock(nn.Module):
    """QKV projection, optional q/k norm (Qwen3), RoPE, KV write, paged attention, o_proj."""

    def __init__(
        self,
        layer_idx: int,
        qkv: SplitProjection,
        o_proj: nn.Module,
        head_dims: tuple[int, int, int],
        q_norm: RMSNorm | None,
        k_norm: RMSNorm | None,
        window: int | None,
    ) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.qkv = qkv
        self.o_proj = o_proj
        self.num_heads, self.num_kv_heads, self.head_dim = head_dims
        self.q_norm = q_norm
        self.k_norm = k_norm
        self.window = window
        self.scale = self.head_dim**-0.5

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        n = x.shape[0]
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        fused = self.qkv.fused
        if fused is not None and self.q_norm is None:
            # One fused output [N, Hq + 2 Hkv, D]: RoPE on the q and k heads in one pass.
            y = fused(x).view(n, hq + 2 * hkv, d)
            qk = apply_rotary(y[:, : hq + hkv], ctx.cos, ctx.sin)
            q, k, v = qk[:, :hq], qk[:, hq:], y[:, hq + hkv :]
        else:
            q, k, v = self.qkv(x)
            q = q.reshape(n, hq, d)
            k = k.reshape(n, hkv, d)
            v = v.reshape(n, hkv, d)
            if self.q_norm is not None and self.k_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            q = apply_rotary(q, ctx.cos, ctx.sin)
            k = apply_rotary(k, ctx.cos, ctx.sin)
        layer_kv = ctx.kv.layer(self.layer_idx)
        layer_kv.write(k, v, ctx.meta.slot_pages, ctx.meta.slot_offsets)
        out = ctx.backend.forward(q, layer_kv, ctx.meta, self.scale, self.window)
        return self.o_proj(out.reshape(n, self.num_heads * self.head_dim))


class MLPBlock(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, gate_up: SplitProjection, down: nn.Module) -> None:
        super().__init__()
        self.gate_up = gate_up
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x)
        return self.down(nn.functional.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(
        self, attn: AttentionBlock, mlp: MLPBlock, input_norm: RMSNorm, post_norm: RMSNorm
    ) -> None:
        super().__init__()
        self.attn = attn
        self.mlp = mlp
        self.input_norm = input_norm
        self.post_norm = post_norm

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        h = x + self.attn(self.input_norm(x), ctx)
        return h + self.mlp(self.post_norm(h))
