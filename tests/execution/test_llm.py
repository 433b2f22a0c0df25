"""The offline LLM API: batching, chunked prefill, quantized KV, several models in one arena."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fineserve import LLM, SamplingParams
from fineserve.execution.batch import SeqChunk
from fineserve.execution.testing import hf_greedy, load, make_runner, make_tiny, run_greedy

PROMPTS = [[5, 17, 42, 9, 100, 3, 77, 1, 2, 3, 4, 5, 6], [8, 1], [200, 13, 14, 15, 16, 99, 98]]
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "llama": make_tiny("llama", root / "llama", seed=1),
        "qwen3": make_tiny("qwen3", root / "qwen3", seed=2),
    }


def test_generate_matches_transformers_with_chunked_prefill(models: dict[str, Path]) -> None:
    llm = LLM({"m": models["llama"]}, arena_bytes=1 << 20, tokens_per_page=4, max_batched_tokens=8)
    outs = llm.generate(PROMPTS, GREEDY)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out.token_ids == hf_greedy(models["llama"], prompt, 10)
        assert out.finish_reason == "length"
        assert out.prompt_token_ids == prompt
    assert llm.allocator.used_pages("m") == 0


def test_two_precisions_interleaved_in_one_arena_equal_alone(models: dict[str, Path]) -> None:
    kv = {"a": None, "b": "int8"}
    paths = {"a": models["llama"], "b": models["qwen3"]}
    alone = {
        name: LLM({name: paths[name]}, arena_bytes=1 << 20, kv_dtype=kv[name]).generate(
            PROMPTS, GREEDY
        )
        for name in paths
    }
    both = LLM(paths, arena_bytes=1 << 20, kv_dtype=kv, tokens_per_page=4)
    names = ["a", "b"] * len(PROMPTS)
    outs = both.generate([p for p in PROMPTS for _ in (0, 1)], GREEDY, model=names)
    for i, out in enumerate(outs):
        ref = alone[names[i]][i // 2]
        assert out.model == names[i]
        assert out.token_ids == ref.token_ids
    assert both.allocator.used_pages("a") == both.allocator.used_pages("b") == 0
    both.allocator.check_integrity()


def test_preemption_under_memory_pressure_keeps_outputs(models: dict[str, Path]) -> None:
    roomy = LLM({"m": models["llama"]}, arena_bytes=1 << 20, tokens_per_page=4)
    fmt_bytes = roomy.allocator.page_format("m").page_bytes
    tight = LLM({"m": models["llama"]}, arena_bytes=fmt_bytes * 12, tokens_per_page=4)
    prompts = PROMPTS * 2
    want = [o.token_ids for o in roomy.generate(prompts, GREEDY)]
    assert [o.token_ids for o in tight.generate(prompts, GREEDY)] == want


def test_chunked_prefill_equals_full_prefill_on_quantized_kv(models: dict[str, Path]) -> None:
    loaded = load(models["qwen3"])
    for kind in ("fp32", "int4"):
        full = run_greedy(make_runner(loaded, kind), PROMPTS, 6)
        chunked = run_greedy(make_runner(loaded, kind), PROMPTS, 6, chunk=3)
        assert chunked == full


@pytest.mark.parametrize(("kind", "tol"), [("fp8", 0.1), ("int8", 0.02), ("int4", 0.25)])
def test_quantized_kv_logits_stay_close(models: dict[str, Path], kind: str, tol: float) -> None:
    loaded = load(models["llama"])
    chunk = [SeqChunk(0, PROMPTS[0], 0, list(range(8)))]
    ref = make_runner(loaded).compute_logits(chunk)
    got = make_runner(loaded, kind).compute_logits(chunk)
    assert (got - ref).abs().max() <= tol * ref.abs().max()


def test_bad_inputs_raise_clear_errors(models: dict[str, Path], tmp_path: Path) -> None:
    llm = LLM({"m": models["llama"]}, arena_bytes=1 << 20)
    with pytest.raises(ValueError, match="unknown model"):
        llm.generate([[1, 2]], GREEDY, model="nope")
    with pytest.raises(ValueError, match="outside"):
        llm.generate([[1, 100000]], GREEDY)
    with pytest.raises(ValueError, match="tokenizer"):
        llm.generate("hello", GREEDY)
    with pytest.raises(ValueError, match="2 values for 1 prompts"):
        llm.generate([[1, 2]], [GREEDY, GREEDY])
    with pytest.raises(ValueError, match="kv_dtype"):
        LLM({"m": models["llama"]}, kv_dtype="int3")
    with pytest.raises(ValueError, match="at least one model"):
        LLM({})
    with pytest.raises(ValueError, match="not a model folder"):
        LLM({"m": tmp_path})


def test_logprobs_are_returned(models: dict[str, Path]) -> None:
    llm = LLM({"m": models["llama"]}, arena_bytes=1 << 20)
    params = SamplingParams(temperature=0, max_tokens=3, logprobs=2)
    out = llm.generate([PROMPTS[1]], params)[0]
    assert out.logprobs is not None and out.top_logprobs is not None
    assert len(out.logprobs) == 3
    for tok, lp, top in zip(out.token_ids, out.logprobs, out.top_logprobs, strict=True):
        assert top is not None and lp is not None
        assert next(iter(top)) == tok and top[tok] == pytest.approx(lp)
        assert lp <= 0 and len(top) == 2
    assert torch.isfinite(torch.tensor(out.logprobs)).all()
