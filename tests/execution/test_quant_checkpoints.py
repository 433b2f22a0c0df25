"""Checkpoints written by llmcompressor and AutoAWQ: our reader equals the tool's dequantization."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fineserve.execution.quant import (
    build_linear,
    dequantize_weight,
    is_quantized,
    parse_quant_config,
)

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints"
EXPECTED = {
    "awq-gemm": ("awq", None, True),
    "ct-w4a16": ("ct-w4a16", None, False),
    "ct-w4a16-asym": ("ct-w4a16", None, True),
    "ct-fp8-dynamic": ("fp8", None, False),
    "ct-fp8-kv": ("fp8", "fp8", False),
    "ct-w8a8-int8": ("w8a8", None, False),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reader_matches_tool_dequantization(name: str) -> None:
    folder = ROOT / name
    qcfg = parse_quant_config(json.loads((folder / "config.json").read_text()))
    assert (qcfg.method, qcfg.kv_cache_dtype, qcfg.zero_point) == EXPECTED[name]
    tensors = load_file(str(folder / "model.safetensors"))
    reference = load_file(str(folder / "reference_dequantized.safetensors"))
    assert len(reference) == 8
    for key, ref in reference.items():
        prefix = key.removesuffix(".weight")
        assert is_quantized(qcfg, prefix)
        ours = dequantize_weight(qcfg, prefix, tensors)
        assert ours.dtype == torch.float32 and ours.shape == ref.shape
        # the tools decompress in bf16/fp16; our float32 values round to exactly the same numbers
        assert torch.equal(ours.to(ref.dtype), ref), key
    assert not is_quantized(qcfg, "lm_head")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_linear_methods_run_on_tool_checkpoints(name: str) -> None:
    folder = ROOT / name
    qcfg = parse_quant_config(json.loads((folder / "config.json").read_text()))
    tensors = load_file(str(folder / "model.safetensors"))
    prefix = "model.layers.1.mlp.down_proj"
    mod = build_linear(qcfg, prefix, tensors, 256, 128, None, torch.bfloat16)
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(0))
    y = mod(x)
    assert y.dtype == torch.bfloat16 and y.shape == (4, 128)
    dense = x @ dequantize_weight(qcfg, prefix, tensors).t()
    # W4A16 is exact up to bf16; W8A8/FP8 add activation rounding of a few percent at most
    assert (y.float() - dense).abs().max() <= 0.05 * dense.abs().max()


def test_fp8_kv_scales_present() -> None:
    tensors = load_file(str(ROOT / "ct-fp8-kv" / "model.safetensors"))
    for layer in range(2):
        for kind in ("k", "v"):
            scale = tensors[f"model.layers.{layer}.self_attn.{kind}_scale"]
            assert scale.numel() == 1 and float(scale) > 0
