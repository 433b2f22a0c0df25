"""Per-layer K/V views of a model's pages in the shared arena (one torch uint8 tensor).

Model page `p` starts at arena byte `p * page_stride`; inside the page the layout is
`memory.formats.PageLayout`. Every view here is a `torch.as_strided` over a dtype
reinterpretation of the arena, so writes go straight into the arena bytes and no copy of the
cache exists. Views never reach past `num_pages * page_stride` (callers pass
`allocator.num_page_ids(model)`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fineserve.execution.kv_quant import KVCodec, codec_for
from fineserve.memory.formats import KVFormat


def strided_view(
    arena: torch.Tensor,
    dtype: torch.dtype,
    byte_offset: int,
    page_stride: int,
    shape: tuple[int, ...],
) -> torch.Tensor:
    """View [num_pages, *shape] of `dtype` elements at `byte_offset` within each page.

    Requires byte_offset and page_stride to be multiples of the element size.
    """
    size = torch.empty((), dtype=dtype).element_size()
    if byte_offset % size or page_stride % size:
        raise ValueError(
            f"offset {byte_offset} / page stride {page_stride} not aligned to {dtype} ({size} B)"
        )
    usable = arena.numel() - arena.numel() % size
    typed = arena[:usable].view(dtype)
    strides = [page_stride // size]
    inner = 1
    inner_strides = []
    for dim in reversed(shape[1:]):
        inner_strides.append(inner)
        inner *= dim
    strides += list(reversed(inner_strides))
    return typed.as_strided(shape, strides, typed.storage_offset() + byte_offset // size)


class LayerKV:
    """K and V of one layer across all of a model's page ids, with their scales."""

    def __init__(
        self,
        arena: torch.Tensor,
        fmt: KVFormat,
        layer: int,
        page_stride: int,
        num_pages: int,
        tensor_scales: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        self.codec: KVCodec = codec_for(fmt.dtype)
        self.tensor_scales = tensor_scales
        lay = fmt.layout
        t, h, d = fmt.tokens_per_page, fmt.kv_heads, fmt.head_dim
        shape = (num_pages, t, h, self.codec.data_width(d))
        store = self.codec.storage_dtype
        self.k = strided_view(arena, store, lay.k_offset(layer), page_stride, shape)
        self.v = strided_view(arena, store, lay.v_offset(layer), page_stride, shape)
        self.k_scale: torch.Tensor | None = None
        self.v_scale: torch.Tensor | None = None
        n_scale = fmt.dtype.scales_per_token_head
        if n_scale:
            sshape = (num_pages, t, h, n_scale)
            k_off, v_off = lay.k_scale_offset(layer), lay.v_scale_offset(layer)
            self.k_scale = strided_view(arena, torch.float16, k_off, page_stride, sshape)
            self.v_scale = strided_view(arena, torch.float16, v_off, page_stride, sshape)
        self.tokens_per_page = t

    def write(
        self, k: torch.Tensor, v: torch.Tensor, pages: torch.Tensor, offsets: torch.Tensor
    ) -> None:
        """Store k, v [N, H, D] for N tokens at (pages[i], offsets[i]) (long tensors [N])."""
        for x, data, scale_view, ts in (
            (k, self.k, self.k_scale, self.tensor_scales[0]),
            (v, self.v, self.v_scale, self.tensor_scales[1]),
        ):
            q, scales = self.codec.quantize(x, ts)
            data[pages, offsets] = q
            if scale_view is not None and scales is not None:
                scale_view[pages, offsets] = scales

    def gather(
        self, page_table: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V for page rows [B, P] -> [B, P*T, H, D] in `dtype` (padding pages included)."""
        out = []
        flat = page_table.reshape(-1)
        b, p = page_table.shape
        for data, scale_view, ts in (
            (self.k, self.k_scale, self.tensor_scales[0]),
            (self.v, self.v_scale, self.tensor_scales[1]),
        ):
            raw = torch.index_select(data, 0, flat)  # copies whole pages: fast path
            scales = None if scale_view is None else torch.index_select(scale_view, 0, flat)
            x = self.codec.dequantize(raw, scales, dtype, ts)
            out.append(x.reshape(b, p * self.tokens_per_page, *x.shape[2:]))
        return out[0], out[1]


class KVCache:
    """A model's KV pages in the arena: one `LayerKV` per layer (views, no copies)."""

    def __init__(
        self,
        arena: torch.Tensor,
        fmt: KVFormat,
        page_stride: int,
        num_pages: int,
        tensor_scales: Sequence[tuple[float, float]] | None = None,
    ) -> None:
        if arena.dtype != torch.uint8 or arena.dim() != 1:
            raise ValueError("the arena must be a 1-D torch.uint8 tensor")
        if page_stride < fmt.page_bytes:
            raise ValueError(f"page stride {page_stride} < page bytes {fmt.page_bytes}")
        if num_pages < 1 or (num_pages - 1) * page_stride + fmt.page_bytes > arena.numel():
            raise ValueError(f"{num_pages} pages of stride {page_stride} overrun the arena")
        scales = list(tensor_scales or [(1.0, 1.0)] * fmt.num_layers)
        self.fmt = fmt
        self.num_pages = num_pages
        self.layers = [
            LayerKV(arena, fmt, i, page_stride, num_pages, scales[i]) for i in range(fmt.num_layers)
        ]

    def layer(self, index: int) -> LayerKV:
        return self.layers[index]

    @property
    def tokens_per_page(self) -> int:
        return self.fmt.tokens_per_page
