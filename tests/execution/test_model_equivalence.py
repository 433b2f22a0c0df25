"""Greedy tokens and logits of our runtime against transformers on the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from fineserve.execution.batch import SeqChunk
from fineserve.execution.testing import hf_greedy, load, make_runner, make_tiny, run_greedy

PROMPTS = [[5, 17, 42, 9, 100, 3, 77], [8, 1], [200, 13, 14, 15, 16, 99, 98, 97, 96, 11, 12]]
NEW = 8


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_batched_greedy_matches_transformers(arch: str, tmp_path: Path) -> None:
    folder = make_tiny(arch, tmp_path / arch)
    ours = run_greedy(make_runner(load(folder)), PROMPTS, NEW)
    for prompt, got in zip(PROMPTS, ours, strict=True):
        assert got == hf_greedy(folder, prompt, NEW)


def test_llama3_rope_tied_embeddings_and_bias(tmp_path: Path) -> None:
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    folder = make_tiny(
        "llama",
        tmp_path / "l3",
        rope_parameters=rope,
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
    )
    ours = run_greedy(make_runner(load(folder)), PROMPTS, NEW)
    assert ours == [hf_greedy(folder, p, NEW) for p in PROMPTS]


def test_mistral_sliding_window(tmp_path: Path) -> None:
    folder = make_tiny("mistral", tmp_path / "m", sliding_window=4)
    ours = run_greedy(make_runner(load(folder)), PROMPTS, NEW)
    assert ours == [hf_greedy(folder, p, NEW) for p in PROMPTS]


@pytest.mark.parametrize(("dtype", "tol"), [("fp16", 2e-2), ("bf16", 1.5e-1)])
def test_half_precision_logits_within_tolerance(dtype: str, tol: float, tmp_path: Path) -> None:
    folder = make_tiny("qwen3", tmp_path / "q")
    prompt = PROMPTS[2]
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0, -1]
    runner = make_runner(load(folder, dtype))
    got = runner.compute_logits([SeqChunk(0, prompt, 0, list(range(8)))])[0]
    scale = ref.abs().max()
    assert torch.allclose(got, ref, atol=tol * float(scale), rtol=0)
