"""Pack -> unpack of every weight format against per-element readings of the format definition.

The `_read_*` helpers below decode single elements with plain Python integer bit operations, as
the format is specified (docs/formats.md), independently of the vectorised code under test.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.execution.quant.awq import dequantize_awq, quantize_awq
from fineserve.execution.quant.ct import (
    dequantize_packed,
    dequantize_scaled,
    pack_zero_points,
    quantize_fp8,
    quantize_int8,
    quantize_packed,
)
from fineserve.execution.quant.gptq import dequantize_gptq, quantize_gptq
from fineserve.execution.quant.packing import AWQ_ORDER, pack_last, unpack_last
from fineserve.execution.quant.qoq import dequantize_qoq, quantize_qoq


def _nibble(word: int, slot: int, bits: int = 4) -> int:
    return ((word & 0xFFFFFFFF) >> (bits * slot)) & ((1 << bits) - 1)


def _weight(out_f: int, in_f: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([2, 4, 8]), rows=st.integers(1, 4), words=st.integers(1, 3),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_pack_last_matches_bitwise_definition(bits: int, rows: int, words: int, seed: int) -> None:
    per = 32 // bits
    gen = torch.Generator().manual_seed(seed)
    vals = torch.randint(0, 1 << bits, (rows, words * per), generator=gen)
    packed = pack_last(vals, bits)
    assert packed.dtype == torch.int32 and packed.shape == (rows, words)
    for r in range(rows):
        for c in range(words):
            expect = sum(int(vals[r, c * per + j]) << (bits * j) for j in range(per))
            assert int(packed[r, c]) & 0xFFFFFFFF == expect
    assert torch.equal(unpack_last(packed, bits), vals.to(torch.int32))


def test_pack_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        pack_last(torch.tensor([[16, 0, 0, 0, 0, 0, 0, 0]]), 4)
    with pytest.raises(ValueError):
        pack_last(torch.zeros(1, 7, dtype=torch.int64), 4)


def test_awq_layout_and_roundtrip() -> None:
    w = _weight(16, 64)
    t = quantize_awq(w, 32)
    assert t["qweight"].shape == (64, 2) and t["qzeros"].shape == (2, 2)
    assert t["scales"].shape == (2, 16) and t["scales"].dtype == torch.float16
    deq = dequantize_awq(t["qweight"], t["qzeros"], t["scales"])
    for o in range(16):
        slot = AWQ_ORDER.index(o % 8)
        for i in range(0, 64, 5):
            q = _nibble(int(t["qweight"][i, o // 8]), slot)
            z = _nibble(int(t["qzeros"][i // 32, o // 8]), slot)
            s = float(t["scales"][i // 32, o])
            assert deq[o, i].item() == pytest.approx((q - z) * s, abs=0, rel=1e-6)
    step = t["scales"].float().t()[:, torch.arange(64) // 32]
    assert ((deq - w).abs() <= step / 2 + 1e-4).all()


@pytest.mark.parametrize("desc_act", [False, True])
def test_gptq_layout_and_roundtrip(desc_act: bool) -> None:
    w = _weight(16, 64, seed=1)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(3)) if desc_act else None
    t = quantize_gptq(w, 16, perm=perm)
    assert t["qweight"].shape == (8, 16) and t["qzeros"].shape == (4, 2)
    g_idx = t["g_idx"]
    assert torch.bincount(g_idx.long()).tolist() == [16, 16, 16, 16]
    if not desc_act:
        assert torch.equal(g_idx, (torch.arange(64) // 16).to(torch.int32))
    else:
        assert not torch.equal(g_idx, (torch.arange(64) // 16).to(torch.int32))
    deq = dequantize_gptq(t["qweight"], t["qzeros"], t["scales"], g_idx, 4, "gptq")
    for o in range(16):
        for i in range(0, 64, 3):
            g = int(g_idx[i])
            q = _nibble(int(t["qweight"][i // 8, o]), i % 8)
            z = _nibble(int(t["qzeros"][g, o // 8]), o % 8) + 1  # v1 stores zero - 1
            assert z == 8  # symmetric
            s = float(t["scales"][g, o])
            assert deq[o, i].item() == pytest.approx((q - z) * s, abs=0, rel=1e-6)
    step = t["scales"].float().t()[:, g_idx.long()]
    # symmetric: max|w| maps to 7.5 steps and clips to 7 -> half a step, plus scale rounding
    assert ((deq - w).abs() <= step * 0.51 + 1e-4).all()


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_gptq_asymmetric_zero_storage(fmt: str) -> None:
    w = _weight(8, 32, seed=2).abs() + 0.5  # all positive: true zero point 0
    t = quantize_gptq(w, 32, sym=False, checkpoint_format=fmt)
    # the true zero point is 0; v1 stores zero - 1 and cannot hold -1 (it would read back as
    # 16), so our v1 quantizer uses zero 1 (stored 0) and loses one step at the top of the range
    assert {_nibble(int(t["qzeros"][0, c]), j) for c in range(1) for j in range(8)} == {0}
    deq = dequantize_gptq(t["qweight"], t["qzeros"], t["scales"], None, 4, fmt)
    step = t["scales"].float().t()
    bound = step * 1.01 if fmt == "gptq" else step * 0.51
    assert ((deq - w).abs() <= bound + 1e-4).all()


def test_ct_pack_quantized_layout_and_roundtrip() -> None:
    w = _weight(8, 64, seed=4)
    t = quantize_packed(w, 4, 32, torch.bfloat16)
    assert t["weight_packed"].shape == (8, 8) and t["weight_scale"].shape == (8, 2)
    assert t["weight_scale"].dtype == torch.bfloat16 and t["weight_shape"].tolist() == [8, 64]
    deq = dequantize_packed(t["weight_packed"], t["weight_scale"], t["weight_shape"], 4)
    for o in range(8):
        for i in range(64):
            q = _nibble(int(t["weight_packed"][o, i // 8]), i % 8) - 8
            assert deq[o, i].item() == q * float(t["weight_scale"][o, i // 32])
    step = t["weight_scale"].float()[:, torch.arange(64) // 32]
    # symmetric: max|w| maps to 7.5 steps and clips to 7 -> half a step, plus bf16 scale rounding
    assert ((deq - w).abs() <= step * 0.55).all()


def test_ct_zero_points_pack_along_outputs() -> None:
    zp = torch.randint(-8, 8, (16, 3), generator=torch.Generator().manual_seed(5))
    packed = pack_zero_points(zp, 4)
    assert packed.shape == (2, 3)
    for o in range(16):
        for g in range(3):
            assert _nibble(int(packed[o // 8, g]), o % 8) - 8 == int(zp[o, g])
    q = torch.randint(-8, 8, (16, 24), generator=torch.Generator().manual_seed(6))
    scale = torch.rand(16, 3) + 0.1
    deq = dequantize_packed(pack_last(q + 8, 4), scale, (16, 24), 4, packed)
    gi = torch.arange(24) // 8
    assert torch.allclose(deq, (q - zp[:, gi]).float() * scale[:, gi])


@pytest.mark.parametrize("strategy", ["channel", "tensor"])
def test_fp8_weight_roundtrip(strategy: str) -> None:
    w = _weight(8, 32, seed=7)
    t = quantize_fp8(w, strategy)
    assert t["weight"].dtype == torch.float8_e4m3fn
    assert t["weight_scale"].shape == ((8, 1) if strategy == "channel" else (1,))
    deq = dequantize_scaled(t["weight"], t["weight_scale"])
    assert torch.equal(deq, t["weight"].float() * t["weight_scale"].float())
    # e4m3 keeps 3 mantissa bits: relative error at most 2**-4 for normal values
    assert ((deq - w).abs() <= w.abs() / 16 + 1e-3).all()


def test_int8_weight_roundtrip() -> None:
    w = _weight(8, 32, seed=8)
    t = quantize_int8(w, torch.float32)
    assert t["weight"].dtype == torch.int8 and t["weight_scale"].shape == (8, 1)
    deq = dequantize_scaled(t["weight"], t["weight_scale"])
    assert ((deq - w).abs() <= t["weight_scale"] / 2 + 1e-6).all()


def test_qoq_layout_and_roundtrip() -> None:
    w = _weight(8, 64, seed=9)
    t = quantize_qoq(w, 32)
    assert t["qweight"].shape == (8, 8) and t["s2_scales"].dtype == torch.uint8
    deq = dequantize_qoq(t["qweight"], t["s1_scales"], t["s2_scales"], t["s2_zeros"])
    for o in range(8):
        for i in range(64):
            q = _nibble(int(t["qweight"][o, i // 8]), i % 8)
            g = i // 32
            w_int = (q - int(t["s2_zeros"][o, g])) * int(t["s2_scales"][o, g])
            assert abs(w_int) <= 127
            assert deq[o, i].item() == pytest.approx(w_int * float(t["s1_scales"][o, 0]), rel=1e-6)
    s1 = t["s1_scales"].float()
    step = s1 * t["s2_scales"].float()[:, torch.arange(64) // 32]
    assert ((deq - w).abs() <= step / 2 + s1 / 2 + 1e-4).all()
