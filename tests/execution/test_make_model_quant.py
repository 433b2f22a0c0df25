"""Quantized make-model folders: configs parse, tensors decode close to the dense weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fineserve.execution import make_model
from fineserve.execution.quant import build_linear, dequantize_weight, parse_quant_config
from fineserve.execution.quant.export import QUANT_PRECISIONS


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    out = make_model.write_from_argv(tmp_path_factory.mktemp("dense") / "m", "--arch", "qwen2")
    return load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("precision", QUANT_PRECISIONS)
def test_quantized_folder_decodes_to_the_dense_weights(
    tmp_path: Path, dense: dict[str, torch.Tensor], precision: str
) -> None:
    extra = ["--desc-act"] if precision == "gptq" else []
    out = make_model.write_from_argv(
        tmp_path / "m", "--arch", "qwen2", "--precision", precision, *extra
    )
    config = json.loads((out / "config.json").read_text())
    qcfg = parse_quant_config(config)
    tensors = load_file(str(out / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.weight" not in tensors or precision in ("fp8", "w8a8")
    assert (
        tensors["model.layers.0.self_attn.q_proj.bias"].dtype
        == tensors["model.embed_tokens.weight"].dtype
    )  # biases stay dense in the base dtype
    for layer in range(2):
        for leaf, (o, i) in {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (32, 64),
                             "mlp.down_proj": (64, 128)}.items():  # fmt: skip
            prefix = f"model.layers.{layer}.{leaf}"
            w = dense[f"{prefix}.weight"]
            deq = dequantize_weight(qcfg, prefix, tensors)
            assert deq.shape == (o, i)
            rel = 0.05 if precision in ("fp8", "w8a8") else 0.12
            assert (deq - w).abs().max() <= rel * w.abs().max(), prefix
            mod = build_linear(qcfg, prefix, tensors, i, o, None, torch.float32)
            assert torch.isfinite(mod(torch.randn(2, i))).all()
    if precision == "fp8":
        assert qcfg.kv_cache_dtype == "fp8"
        assert float(tensors["model.layers.1.self_attn.k_scale"]) > 0
    if precision == "qoq":
        assert qcfg.kv_cache_dtype == "int4"
