"""KV codecs: how K/V values of one format are stored in a page and read back.

A codec maps values x [..., H, D] (any float dtype) to (data, scales):

* float formats (fp32/fp16/bf16): data = x cast; no scales.
* FP8 (e4m3): data = bytes of fp8(x / s) with a per-tensor scale `s` kept outside the page.
* INT8: symmetric per (token, head): scale = fp16(amax / 127), q = round(x / scale) in
  [-127, 127]; scales [..., H, 1] fp16. |x - deq| <= scale / 2 + amax * 2^-10.
* INT4: asymmetric per (token, head): scale = fp16((max - min) / 15), zero = fp16(min),
  q = round((x - zero) / scale) in [0, 15], two values per byte along D (even element in the
  low nibble); scales [..., H, 2] = (scale, zero) fp16. deq = q * scale + zero.

Data is stored through a byte-compatible view dtype (`storage_dtype`) so every format writes
and gathers with plain indexing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from fineserve.memory.formats import KVDtype

FP8_MAX = 448.0
_TINY = 1e-5  # smallest scale, keeps all-zero rows finite


@dataclass(frozen=True)
class KVCodec:
    """Quantize/dequantize for one KV dtype. `data_width(D)` = stored elements per head."""

    kind: KVDtype
    storage_dtype: torch.dtype

    def data_width(self, head_dim: int) -> int:
        return head_dim // 2 if self.kind is KVDtype.INT4 else head_dim

    def quantize(
        self, x: torch.Tensor, tensor_scale: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        kind = self.kind
        if kind is KVDtype.FP8:
            q = (x.float() / tensor_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            return q.view(torch.uint8), None
        if kind is KVDtype.INT8:
            return _quant_int8(x.float())
        if kind is KVDtype.INT4:
            return _quant_int4(x.float())
        return x.to(self.storage_dtype), None

    def dequantize(
        self,
        data: torch.Tensor,
        scales: torch.Tensor | None,
        dtype: torch.dtype,
        tensor_scale: float = 1.0,
    ) -> torch.Tensor:
        kind = self.kind
        if kind is KVDtype.FP8:
            return (data.view(torch.float8_e4m3fn).to(torch.float32) * tensor_scale).to(dtype)
        if kind is KVDtype.INT8:
            assert scales is not None
            return (data.to(torch.float32) * scales.to(torch.float32)).to(dtype)
        if kind is KVDtype.INT4:
            assert scales is not None
            low = (data & 0x0F).to(torch.float32)
            high = (data >> 4).to(torch.float32)
            q = torch.stack((low, high), dim=-1).flatten(-2)
            s = scales.to(torch.float32)
            return (q * s[..., 0:1] + s[..., 1:2]).to(dtype)
        return data.to(dtype)


def _quant_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = x.abs().amax(dim=-1, keepdim=True)
    scale = (amax / 127.0).clamp_min(_TINY).to(torch.float16)
    q = torch.round(x / scale.float()).clamp(-127, 127).to(torch.int8)
    return q, scale


def _quant_int4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lo = x.amin(dim=-1, keepdim=True)
    hi = x.amax(dim=-1, keepdim=True)
    scale = ((hi - lo) / 15.0).clamp_min(_TINY).to(torch.float16)
    zero = lo.to(torch.float16)
    q = torch.round((x - zero.float()) / scale.float()).clamp(0, 15).to(torch.uint8)
    packed = q[..., 0::2] | (q[..., 1::2] << 4)
    return packed, torch.cat((scale, zero), dim=-1)


_STORAGE: Mapping[KVDtype, torch.dtype] = MappingProxyType(
    {
        KVDtype.FP32: torch.float32,
        KVDtype.FP16: torch.float16,
        KVDtype.BF16: torch.bfloat16,
        KVDtype.FP8: torch.uint8,
        KVDtype.INT8: torch.int8,
        KVDtype.INT4: torch.uint8,
    }
)


def codec_for(kind: KVDtype) -> KVCodec:
    return KVCodec(kind, _STORAGE[kind])


def roundtrip_bound(kind: KVDtype, x: torch.Tensor, tensor_scale: float = 1.0) -> torch.Tensor:
    """Per-element worst-case |x - dequantize(quantize(x))| the format promises (x [..., D]).

    FP8 values saturate at +-448 * tensor_scale; the bound holds inside that range.
    """
    x = x.float()
    amax = x.abs().amax(dim=-1, keepdim=True)
    if kind is KVDtype.INT8:
        return (amax / 127.0).clamp_min(_TINY) * 0.5 * (1 + 2**-10) + amax * 2**-10
    if kind is KVDtype.INT4:
        span = (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / 15.0
        return span.clamp_min(_TINY) * 0.5 * (1 + 2**-9) + amax * 2**-9
    if kind is KVDtype.FP8:  # e4m3: 3 mantissa bits -> rel 2^-4; subnormal step 2^-9
        return x.abs() * 2**-4 + tensor_scale * 2**-9
    if kind in (KVDtype.FP16, KVDtype.BF16):
        return x.abs() * (2**-11 if kind is KVDtype.FP16 else 2**-8)
    return torch.zeros_like(x)
