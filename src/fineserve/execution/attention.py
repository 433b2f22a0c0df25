"""Paged attention over arena views, behind a small backend interface.

A backend computes, for the flattened queries q [N, Hq, D] of one step, attention over each
sequence's K/V pages (already holding this step's new tokens) and returns [N, Hq, D].
Semantics: causal by absolute position (key slots past a sequence's context are never read
into the result, whatever bytes they hold), GQA (query head h reads KV head h // (Hq / Hkv)),
optional sliding window (key j visible to query at position i iff i - window < j <= i).

`TorchReferenceBackend` is the oracle every fast backend is tested against. Backends are looked
up by name in a `BackendRegistry` (no global state: build one with `default_backends()`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch.nn import functional

from fineserve.execution.batch import AttentionMetadata
from fineserve.execution.kv_views import LayerKV


class AttentionBackend(ABC):
    name: str = "abstract"

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,
        kv: LayerKV,
        meta: AttentionMetadata,
        scale: float,
        window: int | None,
    ) -> torch.Tensor:
        """Attention output [N, Hq, D] for queries q [N, Hq, D]."""


class TorchReferenceBackend(AttentionBackend):
    """Gathers pages into dense K/V and calls SDPA: decodes batched, prefills one by one."""

    name = "torch"

    def forward(
        self,
        q: torch.Tensor,
        kv: LayerKV,
        meta: AttentionMetadata,
        scale: float,
        window: int | None,
    ) -> torch.Tensor:
        out = torch.empty_like(q)
        dec = meta.decode
        if dec is not None:
            k, v = _clean(*kv.gather(dec.page_table, q.dtype), meta.decode_invalid())
            rows = dec.rows
            qd = q if rows is None else q[rows]
            bd, hq, d = qd.shape
            hkv = k.shape[2]
            # GQA without repeating K/V: a KV head's G query heads act as G query rows.
            o = _sdpa(qd.reshape(bd, hkv, hq // hkv, d), k, v, meta.decode_mask(window), scale)
            o = o.reshape(bd, hq, d)
            if rows is None:
                out = o
            else:
                out[rows] = o
        for i, seq in enumerate(meta.prefills):
            k, v = _clean(*kv.gather(seq.page_table, q.dtype), meta.prefill_invalid(i))
            qs = q[seq.start : seq.end].transpose(0, 1)[None]  # [1, Hq, q, D]
            o = _sdpa(qs, k, v, meta.prefill_mask(i, window), scale)
            out[seq.start : seq.end] = o[0].transpose(0, 1)
        return out


def _clean(
    k: torch.Tensor, v: torch.Tensor, invalid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero key/value slots past the context: they hold whatever bytes the arena has there
    (another model's pages, as this dtype possibly NaN/inf), and 0 * NaN would leak through
    the softmax even though those keys are masked. `invalid`: flat slot indices; k, v are
    fresh contiguous gathers [B, L, H, D], zeroed in place."""
    if invalid.numel():
        k.reshape(-1, *k.shape[2:]).index_fill_(0, invalid, 0)
        v.reshape(-1, *v.shape[2:]).index_fill_(0, invalid, 0)
    return k, v


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """q [B, Hq, q, D]; k, v [B, L, Hkv, D]; mask bool broadcastable to [B, Hq, q, L]."""
    return functional.scaled_dot_product_attention(
        q,
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[2],
    )


BackendFactory = Callable[[], AttentionBackend]


class BackendRegistry:
    """Name -> backend factory. Instances are independent; register adds to this one only."""

    def __init__(self) -> None:
        self._factories: dict[str, BackendFactory] = {}

    def register(self, name: str, factory: BackendFactory) -> None:
        if name in self._factories:
            raise ValueError(f"attention backend {name!r} is already registered")
        self._factories[name] = factory

    def create(self, name: str) -> AttentionBackend:
        try:
            return self._factories[name]()
        except KeyError:
            known = ", ".join(sorted(self._factories))
            raise ValueError(f"unknown attention backend {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._factories)


def default_backends() -> BackendRegistry:
    from fineserve.execution.fast_attention import CpuFastBackend

    registry = BackendRegistry()
    registry.register("torch", TorchReferenceBackend)
    registry.register("cpu", CpuFastBackend)
    return registry
