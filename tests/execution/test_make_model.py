"""`fineserve make-model`: folders that transformers loads, tokenizer, determinism, errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fineserve.cli import CliError
from fineserve.execution import make_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    out = {a: make_model.write_from_argv(root / a, "--arch", a) for a in make_model.ARCHS}
    out["llama-fp16"] = make_model.write_from_argv(
        root / "llama-fp16", "--arch", "llama", "--precision", "fp16"
    )
    out["qwen3-bf16"] = make_model.write_from_argv(
        root / "qwen3-bf16", "--arch", "qwen3", "--precision", "bf16"
    )
    return out


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "qwen3", "llama-fp16", "qwen3-bf16"])
def test_transformers_loads_and_gives_finite_peaked_logits(
    folders: dict[str, Path], name: str
) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folders[name]).eval()
    ids = torch.tensor([[1, 40, 41, 200, 300, 7, 9]])
    with torch.no_grad():
        logits = model(ids).logits.float()
    assert logits.shape == (1, 7, 512)
    assert torch.isfinite(logits).all()
    # random weights are scaled so greedy decoding is not a coin toss between near-ties
    assert logits.std() > 1.0
    stored = load_file(str(folders[name] / "model.safetensors"))
    expected = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(name.split("-")[-1])
    assert {t.dtype for t in stored.values()} == {expected or torch.float32}


def test_architecture_features(folders: dict[str, Path]) -> None:
    qwen2 = load_file(str(folders["qwen2"] / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.bias" in qwen2
    assert "model.layers.0.self_attn.o_proj.bias" not in qwen2
    qwen3 = load_file(str(folders["qwen3"] / "model.safetensors"))
    assert qwen3["model.layers.1.self_attn.q_norm.weight"].shape == (16,)
    assert "lm_head.weight" not in qwen3  # tied
    mistral = load_file(str(folders["mistral"] / "model.safetensors"))
    assert mistral["lm_head.weight"].shape == (512, 64)  # untied
    assert mistral["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)  # GQA: 2 x 16
    cfg = json.loads((folders["llama"] / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["num_key_value_heads"] == 2 and cfg["rope_parameters"]["rope_theta"] == 500000.0


def test_tokenizer_round_trips_and_applies_chat_template(folders: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folders["llama"])
    for text in ["Hello world, the quick model!", "  spaces\tand\nnewlines ", "ünïcödé 你好 🙂"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    assert len(tok) <= 512
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tok.apply_chat_template(chat[:1], tokenize=True, add_generation_prompt=False)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == tok.bos_token_id == 1 and ids[1] == tok.convert_tokens_to_ids("<|im_start|>")
    gen = json.loads((folders["llama"] / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, tok.convert_tokens_to_ids("<|im_end|>")]


def test_same_seed_same_weights_other_seed_differs(
    tmp_path: Path, folders: dict[str, Path]
) -> None:
    again = make_model.write_from_argv(tmp_path / "a", "--arch", "llama")
    other = make_model.write_from_argv(tmp_path / "b", "--arch", "llama", "--seed", "1")
    base = (folders["llama"] / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == base
    assert (again / "tokenizer.json").read_bytes() == (
        folders["llama"] / "tokenizer.json"
    ).read_bytes()
    assert (other / "model.safetensors").read_bytes() != base


def test_v4_config_style_and_llama3_rope_scaling(tmp_path: Path) -> None:
    from transformers import AutoConfig

    out = make_model.write_from_argv(
        tmp_path / "m", "--arch", "llama", "--rope-scaling", "llama3", "--config-style", "v4"
    )
    raw = json.loads((out / "config.json").read_text())
    assert "rope_parameters" not in raw and raw["rope_theta"] == 500000.0
    assert raw["rope_scaling"]["rope_type"] == "llama3" and raw["torch_dtype"] == "float32"
    cfg = AutoConfig.from_pretrained(out)
    assert cfg.rope_parameters["rope_type"] == "llama3"


def test_bad_input(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    make_model.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--arch", "llama", "--precision", "int3", "--out", "x"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--arch", "gpt2", "--out", "x"])
    args = parser.parse_args(["--arch", "mistral", "--rope-scaling", "llama3", "--out", "x"])
    with pytest.raises(CliError, match="llama3"):
        make_model.run(args)
    (tmp_path / "file").write_text("x")
    args = parser.parse_args(["--arch", "llama", "--out", str(tmp_path / "file")])
    with pytest.raises(CliError, match="not a folder"):
        make_model.run(args)


def test_registered_in_cli() -> None:
    from fineserve.cli import COMMANDS

    assert COMMANDS["make-model"][0] == "fineserve.execution.make_model"
