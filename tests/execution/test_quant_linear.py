"""The quant API: config parsing, is_quantized, build_linear numerics, bad input."""

from __future__ import annotations

import pytest
import torch

from fineserve.execution.quant import (
    MissingTensorError,
    QuantConfig,
    UnsupportedQuantError,
    build_linear,
    dequantize_weight,
    is_quantized,
    parse_quant_config,
)
from fineserve.execution.quant.export import (
    QUANT_PRECISIONS,
    ExportOptions,
    export_quantized,
    quant_config_dict,
)

PREFIX = "model.layers.0.mlp.down_proj"
METHOD_OF = {"awq": "awq", "gptq": "gptq", "ct-w4a16": "ct-w4a16", "fp8": "fp8",
             "w8a8": "w8a8", "qoq": "qoq"}  # fmt: skip


def _layer(precision: str, out_f: int = 48, in_f: int = 256, **opts: object):
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(out_f, in_f, generator=gen) / in_f**0.5
    tensors, qc = export_quantized({f"{PREFIX}.weight": w}, precision, ExportOptions(**opts))
    return w, tensors, parse_quant_config({"quantization_config": qc})


def _x(in_f: int = 256) -> torch.Tensor:
    return torch.randn(3, 5, in_f, generator=torch.Generator().manual_seed(12))


@pytest.mark.parametrize("precision", QUANT_PRECISIONS)
def test_parse_what_export_writes(precision: str) -> None:
    qcfg = parse_quant_config(
        {"quantization_config": quant_config_dict(precision, 64, ExportOptions())}
    )
    assert qcfg.method == METHOD_OF[precision]
    assert qcfg.kv_cache_dtype == {"fp8": "fp8", "qoq": "int4"}.get(precision)
    if precision in ("awq", "gptq", "ct-w4a16", "qoq"):
        assert qcfg.bits == 4 and qcfg.group_size == 64
    assert (qcfg.act_bits == 8) == (precision in ("fp8", "w8a8", "qoq"))


def test_parse_errors_and_none() -> None:
    assert parse_quant_config({"hidden_size": 8}).method == "none"
    with pytest.raises(UnsupportedQuantError, match="bitsandbytes"):
        parse_quant_config({"quantization_config": {"quant_method": "bitsandbytes"}})
    with pytest.raises(UnsupportedQuantError, match="gemv"):
        parse_quant_config({"quantization_config": {"quant_method": "awq", "version": "gemv"}})
    assert issubclass(UnsupportedQuantError, ValueError)


def test_is_quantized_rules() -> None:
    ct = parse_quant_config({"quantization_config": quant_config_dict("fp8", 128, ExportOptions())})
    assert is_quantized(ct, "model.layers.3.self_attn.q_proj")
    assert not is_quantized(ct, "lm_head") and not is_quantized(ct, "model.embed_tokens")
    ignoring = QuantConfig(method="fp8", ignore=("re:.*layers\\.0\\..*",))
    assert not is_quantized(ignoring, "model.layers.0.mlp.up_proj")
    assert is_quantized(ignoring, "model.layers.10.mlp.up_proj")
    awq = QuantConfig(method="awq", not_convert=("down_proj",))
    assert not is_quantized(awq, PREFIX) and is_quantized(awq, "model.layers.0.mlp.up_proj")
    assert not is_quantized(QuantConfig(method="none"), PREFIX)


@pytest.mark.parametrize("precision", ["awq", "gptq", "ct-w4a16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_w4a16_linear_is_dense_matmul_with_dequantized_weight(
    precision: str, dtype: torch.dtype
) -> None:
    w, tensors, qcfg = _layer(precision, desc_act=True)
    deq = dequantize_weight(qcfg, PREFIX, tensors)
    assert deq.dtype == torch.float32 and deq.shape == w.shape
    assert (deq - w).abs().max() < 0.08 * w.abs().max()  # 4-bit: half a step ~ range / 30
    bias = torch.randn(48)
    mod = build_linear(qcfg, PREFIX, tensors, 256, 48, bias, dtype)
    y = mod(_x())
    assert y.dtype == dtype and y.shape == (3, 5, 48)
    ref = torch.nn.functional.linear(_x().to(dtype), deq.to(dtype), bias.to(dtype))
    assert torch.allclose(y.float(), ref.float(), atol=1e-5 if dtype == torch.float32 else 0.05)


@pytest.mark.parametrize("strategy", ["channel", "tensor"])
def test_fp8_linear_dynamic_per_token(strategy: str) -> None:
    w, tensors, qcfg = _layer("fp8", weight_strategy=strategy)
    mod = build_linear(qcfg, PREFIX, tensors, 256, 48, None, torch.float32)
    x = _x()
    w_q = tensors[f"{PREFIX}.weight"].float() * tensors[f"{PREFIX}.weight_scale"].float().reshape(
        -1, 1
    )
    s_x = x.abs().amax(-1, keepdim=True) / 448
    x_q = (x / s_x).to(torch.float8_e4m3fn).float() * s_x  # independent fake-quant of x
    assert torch.allclose(mod(x), x_q @ w_q.t(), rtol=1e-4, atol=1e-5)
    exact = x @ w.t()
    assert (mod(x) - exact).abs().max() < 0.1 * exact.abs().max()  # fp8 error, not garbage


@pytest.mark.parametrize("precision", ["w8a8", "qoq"])
def test_int8_activation_linears_are_exact_integer_gemms(precision: str) -> None:
    _, tensors, qcfg = _layer(precision)
    mod = build_linear(qcfg, PREFIX, tensors, 256, 48, None, torch.float32)
    x = _x()
    s_x = x.abs().amax(-1, keepdim=True) / 127
    x_q = torch.clamp(torch.round(x / s_x), -128, 127).to(torch.int64)
    if precision == "w8a8":
        w_int = tensors[f"{PREFIX}.weight"].to(torch.int64)
        s_w = tensors[f"{PREFIX}.weight_scale"].float().reshape(-1)
    else:
        deq = dequantize_weight(qcfg, PREFIX, tensors)
        s_w = tensors[f"{PREFIX}.s1_scales"].float().reshape(-1)
        w_int = torch.round(deq / s_w[:, None]).to(torch.int64)
    acc = x_q @ w_int.t()  # int64: exact
    ref = acc.double() * s_x.double() * s_w.double()
    assert torch.allclose(mod(x).double(), ref, rtol=1e-6, atol=1e-6)
    # against the dequantized weight, only the int8 activation rounding remains
    approx = x @ dequantize_weight(qcfg, PREFIX, tensors).t()
    assert (mod(x) - approx).abs().max() < 0.03 * approx.abs().max()


def test_dense_linear_when_not_quantized() -> None:
    w = torch.randn(8, 16)
    mod = build_linear(QuantConfig(method="none"), "lm_head", {"lm_head.weight": w}, 16, 8, None,
                       torch.float16)  # fmt: skip
    x = torch.randn(2, 16)
    assert mod(x).dtype == torch.float16
    assert torch.allclose(mod(x).float(), (x.half() @ w.half().t()).float())


@pytest.mark.parametrize("precision", QUANT_PRECISIONS)
def test_missing_tensor_names_prefix_and_tensor(precision: str) -> None:
    _, tensors, qcfg = _layer(precision)
    victim = next(k for k in sorted(tensors) if "scale" in k)
    del tensors[victim]
    with pytest.raises(MissingTensorError) as info:
        build_linear(qcfg, PREFIX, tensors, 256, 48, None, torch.float32)
    assert isinstance(info.value, KeyError)
    assert info.value.name == victim and info.value.prefix == PREFIX
    assert victim in str(info.value) and PREFIX in str(info.value)


def test_shape_mismatch_is_reported() -> None:
    _, tensors, qcfg = _layer("awq")
    with pytest.raises(ValueError, match="expected"):
        build_linear(qcfg, PREFIX, tensors, 256, 64, None, torch.float32)
