"""KV codecs and arena views: bounded roundtrip error, exact page addressing, isolation."""

from __future__ import annotations

import pytest
import torch

from fineserve.execution.kv_quant import codec_for, roundtrip_bound
from fineserve.execution.kv_views import KVCache
from fineserve.memory.formats import KVDtype, KVFormat

ALL = list(KVDtype)


@pytest.mark.parametrize("kind", ALL)
def test_roundtrip_error_within_format_bound(kind: KVDtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, 32, generator=gen) * torch.logspace(-2, 1, 64)[:, None, None]
    x[0] = 0.0  # an all-zero row must stay finite and exact
    codec = codec_for(kind)
    scale = float(x.abs().max()) / 448 if kind is KVDtype.FP8 else 1.0  # fp8: in range
    data, scales = codec.quantize(x, scale)
    back = codec.dequantize(data, scales, torch.float32, scale)
    assert back.shape == x.shape and torch.isfinite(back).all()
    err = (back - x).abs()
    assert (err <= roundtrip_bound(kind, x, scale) + 1e-7).all()
    assert err[0].max() == 0


def test_int_formats_are_tighter_than_coarse_bound() -> None:
    x = torch.randn(16, 2, 64)
    for kind, levels in ((KVDtype.INT8, 127), (KVDtype.INT4, 7)):
        codec = codec_for(kind)
        back = codec.dequantize(*codec.quantize(x), torch.float32)
        rel = ((back - x).abs().amax(-1) / x.abs().amax(-1)).max()
        assert rel <= 1.0 / levels


def _cache(kind: KVDtype, pages: int = 6, stride_pad: int = 0) -> tuple[KVCache, torch.Tensor]:
    fmt = KVFormat(3, 2, 16, kind, 4)
    stride = fmt.page_bytes + stride_pad
    arena = torch.zeros(stride * pages, dtype=torch.uint8)
    return KVCache(arena, fmt, stride, pages), arena


@pytest.mark.parametrize("kind", ALL)
def test_views_address_pages_per_layout(kind: KVDtype) -> None:
    cache, arena = _cache(kind, stride_pad=16)
    fmt = cache.fmt
    layer = cache.layer(1)
    k = torch.randn(1, 2, 16)
    layer.write(k, k + 1, torch.tensor([3]), torch.tensor([2]))
    stride = fmt.page_bytes + 16
    touched = arena.nonzero().flatten()
    lo, hi = 3 * stride + fmt.layout.k_offset(1), 3 * stride + fmt.layout.k_offset(2)
    assert touched.numel() > 0
    assert int(touched.min()) >= lo and int(touched.max()) < hi
    kk, vv = layer.gather(torch.tensor([[3]]), torch.float32)
    assert kk.shape == (1, 4, 2, 16)
    bound = roundtrip_bound(kind, k)[0]
    assert ((kk[0, 2] - k[0]).abs() <= bound + 1e-7).all()
    assert ((vv[0, 2] - (k[0] + 1)).abs() <= roundtrip_bound(kind, k + 1)[0] + 1e-7).all()


def test_views_reject_misaligned_or_overrunning_arena() -> None:
    fmt = KVFormat(2, 2, 16, KVDtype.FP32, 4)
    arena = torch.zeros(fmt.page_bytes * 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="overrun"):
        KVCache(arena, fmt, fmt.page_bytes, 3)
    with pytest.raises(ValueError, match="aligned"):
        KVCache(torch.zeros(fmt.page_bytes * 3, dtype=torch.uint8), fmt, fmt.page_bytes + 2, 2)
    with pytest.raises(ValueError, match="uint8"):
        KVCache(torch.zeros(10, dtype=torch.float32), fmt, fmt.page_bytes, 1)
