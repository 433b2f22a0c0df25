"""KV page formats: what one page of a model's KV cache looks like, and its byte layout.

A page holds the K and V of `tokens_per_page` consecutive tokens of one sequence for *all*
layers, plus their scales. Byte layout of one page (all offsets from the page start)::

    for layer in range(num_layers):          # layer stride = layer_bytes
        K data   [T, kv_heads, head_dim]      # INT4: two values per byte along head_dim
        K scales [T, kv_heads, n_scale]       # fp16; n_scale: INT8 1 (scale), INT4 2 (scale, zero)
        V data   [T, kv_heads, head_dim]
        V scales [T, kv_heads, n_scale]

FP8 keeps its per-tensor scale outside the page (one float per layer for K and one for V, held
by the model), so its scale region is empty. Because page `p` of a model lives at byte
`p * page_bytes` of the arena, per-layer K (or V) of every page is one strided view of the
arena: shape [num_pages, T, kv_heads, head_dim], page stride `page_bytes`, offset
`PageLayout.k_offset(layer)`. Unmodified paged-attention kernels accept that.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from fineserve.memory.errors import InvalidFormatError


class KVDtype(str, Enum):
    """Element type of stored K/V values."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"  # e4m3, per-tensor scale outside the page
    INT8 = "int8"  # symmetric, fp16 scale per token and head
    INT4 = "int4"  # asymmetric, fp16 scale and zero per token and head

    @property
    def bits(self) -> int:
        return _BITS[self]

    @property
    def scales_per_token_head(self) -> int:
        """How many fp16 scale values each (token, head) carries inside the page."""
        return _SCALES[self]


_BITS = {
    KVDtype.FP32: 32,
    KVDtype.FP16: 16,
    KVDtype.BF16: 16,
    KVDtype.FP8: 8,
    KVDtype.INT8: 8,
    KVDtype.INT4: 4,
}
_SCALES = {
    KVDtype.FP32: 0,
    KVDtype.FP16: 0,
    KVDtype.BF16: 0,
    KVDtype.FP8: 0,
    KVDtype.INT8: 1,
    KVDtype.INT4: 2,
}
SCALE_BYTES = 2  # scales and zeros are stored as fp16


@dataclass(frozen=True)
class KVFormat:
    """Shape of one model instance's KV page (per tensor-parallel rank).

    Invariant: every field is positive and `head_dim * bits` is a whole, even number of bytes,
    so every region of the page starts on a 2-byte boundary.
    """

    num_layers: int
    kv_heads: int
    head_dim: int
    dtype: KVDtype = KVDtype.FP16
    tokens_per_page: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, KVDtype):
            try:
                object.__setattr__(self, "dtype", KVDtype(self.dtype))
            except ValueError as exc:
                raise InvalidFormatError(f"unknown KV dtype {self.dtype!r}") from exc
        for name in ("num_layers", "kv_heads", "head_dim", "tokens_per_page"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidFormatError(f"KV format needs {name} >= 1, got {value!r}")
        if (self.head_dim * self.dtype.bits) % 16:
            raise InvalidFormatError(
                f"head_dim {self.head_dim} at {self.dtype.bits} bits is not a whole number of "
                "2-byte words"
            )

    @property
    def token_head_bytes(self) -> int:
        """Bytes of one token's K (or V) for one head, scales included."""
        data = self.head_dim * self.dtype.bits // 8
        return data + self.dtype.scales_per_token_head * SCALE_BYTES

    @property
    def bytes_per_token(self) -> int:
        """KV bytes one token occupies in all layers (K and V, scales included)."""
        return self.num_layers * 2 * self.kv_heads * self.token_head_bytes

    @property
    def page_bytes(self) -> int:
        """`layers x 2 x T x kv_heads x (head_dim x bits / 8 + scale_bytes)`."""
        return self.bytes_per_token * self.tokens_per_page

    @property
    def layout(self) -> PageLayout:
        return PageLayout(self)

    def with_tokens_per_page(self, tokens_per_page: int) -> KVFormat:
        return KVFormat(self.num_layers, self.kv_heads, self.head_dim, self.dtype, tokens_per_page)

    def describe(self) -> str:
        return (
            f"{self.num_layers}L x {self.kv_heads}H x {self.head_dim}D {self.dtype.value} "
            f"T={self.tokens_per_page} ({self.page_bytes} B/page)"
        )


@dataclass(frozen=True)
class PageLayout:
    """Byte offsets inside one page (see the module docstring). Pure arithmetic."""

    fmt: KVFormat

    @property
    def data_bytes(self) -> int:
        """Bytes of one layer's K (or V) values in one page."""
        f = self.fmt
        return f.tokens_per_page * f.kv_heads * f.head_dim * f.dtype.bits // 8

    @property
    def scale_bytes(self) -> int:
        """Bytes of one layer's K (or V) scales in one page (0 for float formats)."""
        f = self.fmt
        return f.tokens_per_page * f.kv_heads * f.dtype.scales_per_token_head * SCALE_BYTES

    @property
    def layer_bytes(self) -> int:
        return 2 * (self.data_bytes + self.scale_bytes)

    def k_offset(self, layer: int) -> int:
        return layer * self.layer_bytes

    def k_scale_offset(self, layer: int) -> int:
        return self.k_offset(layer) + self.data_bytes

    def v_offset(self, layer: int) -> int:
        return self.k_offset(layer) + self.data_bytes + self.scale_bytes

    def v_scale_offset(self, layer: int) -> int:
        return self.v_offset(layer) + self.data_bytes
