"""Config parsing (both transformers spellings) and loader errors: nothing half-loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fineserve.execution.config import (
    ModelConfigError,
    UnsupportedModelError,
    parse_model_config,
)
from fineserve.execution.loader import ModelLoadError, load_model
from fineserve.execution.testing import make_runner as runner_for
from fineserve.execution.testing import make_tiny, run_greedy

BASE = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 100,
    "intermediate_size": 128,
}


def test_transformers4_and_5_rope_spellings_agree() -> None:
    v4 = {**BASE, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    v5 = {**BASE, "rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}}
    a, b = parse_model_config(v4), parse_model_config(v5)
    assert a.rope == b.rope and a.rope.theta == 5e5 and a.rope.rope_type == "llama3"
    assert a.head_dim == 16 and a.num_kv_heads == 2


def test_architecture_flags() -> None:
    q2 = parse_model_config({**BASE, "model_type": "qwen2"})
    q3 = parse_model_config({**BASE, "model_type": "qwen3", "head_dim": 32})
    assert q2.qkv_bias and not q2.o_bias and not q2.qk_norm
    assert q3.qk_norm and q3.head_dim == 32 and not q3.qkv_bias
    mistral = parse_model_config({**BASE, "model_type": "mistral", "sliding_window": 8})
    assert mistral.sliding_windows == (8, 8)
    assert parse_model_config({**BASE, "torch_dtype": "bfloat16"}).torch_dtype == "bfloat16"


def test_unsupported_architecture_names_file_and_arch() -> None:
    with pytest.raises(UnsupportedModelError, match=r"cfg\.json.*'gpt2'"):
        parse_model_config({**BASE, "model_type": "gpt2"}, source="cfg.json")
    with pytest.raises(UnsupportedModelError, match="rope type 'yarn'"):
        parse_model_config({**BASE, "rope_parameters": {"rope_type": "yarn"}})
    with pytest.raises(ModelConfigError, match="hidden_size"):
        parse_model_config({"model_type": "llama"})


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="not a directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelConfigError, match=r"config\.json is missing"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(BASE))
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors"):
        load_model(tmp_path)


def test_missing_tensor_names_file_and_tensor(tmp_path: Path) -> None:
    folder = make_tiny("llama", tmp_path / "m")
    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.*layers\.1\.mlp\.up_proj"):
        load_model(folder)


def test_unsupported_quant_method(tmp_path: Path) -> None:
    folder = make_tiny("llama", tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes"}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="bitsandbytes"):
        load_model(folder)


def test_sharded_checkpoint_loads_like_single_file(tmp_path: Path) -> None:
    import transformers

    single = make_tiny("qwen2", tmp_path / "one")
    model = transformers.AutoModelForCausalLM.from_pretrained(single)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    a = run_greedy(runner_for(load_model(single)), [[1, 2, 3]], 4)
    b = run_greedy(runner_for(load_model(tmp_path / "sharded")), [[1, 2, 3]], 4)
    assert a == b
    assert load_model(tmp_path / "sharded", dtype="bf16").model.embed.dtype == torch.bfloat16
