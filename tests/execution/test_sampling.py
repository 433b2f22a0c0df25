"""Sampling parameters, masks, seeded reproducibility, logprobs and stop handling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fineserve import LLM, SamplingParams
from fineserve.execution.sampling import Sampler, find_stop, mask_top_k_top_p
from fineserve.execution.testing import make_tiny


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": -5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"logprobs": -1}, "logprobs"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": [-3]}, "stop_token_ids"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_invalid_params_raise_value_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_params_normalise_stop_and_disabled_top_k() -> None:
    p = SamplingParams(stop="END", stop_token_ids=[3], top_k=-1)
    assert p.stop == ("END",) and p.stop_token_ids == (3,) and p.top_k is None


def test_top_k_and_top_p_masks() -> None:
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    kept = torch.isfinite(mask_top_k_top_p(logits, 2, 1.0))
    assert kept.tolist() == [True, True, False, False, False]
    probs = torch.softmax(logits, -1)  # [0.636, 0.234, 0.086, 0.032, 0.012]
    kept = torch.isfinite(mask_top_k_top_p(logits, None, 0.8))
    assert kept.tolist() == [True, True, False, False, False]
    assert probs[:1].sum() < 0.8 <= probs[:2].sum()
    assert torch.isfinite(mask_top_k_top_p(logits, None, 1e-6)).sum() == 1


def test_sampler_greedy_seeded_and_logprobs() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 50, generator=gen)
    greedy = SamplingParams(temperature=0, logprobs=3)
    seeded = SamplingParams(temperature=1.0, seed=7, top_k=10)
    a = Sampler().sample(logits, [greedy, seeded, seeded, seeded], [0, 5, 5, 6])
    b = Sampler().sample(logits[[1]], [seeded], [5])
    assert a[0].token_id == int(logits[0].argmax())
    assert a[0].logprob == pytest.approx(float(torch.log_softmax(logits[0], -1).max()))
    assert a[0].top_logprobs is not None and len(a[0].top_logprobs) == 3
    assert a[1].token_id == b[0].token_id  # depends on (seed, index) only
    assert a[1].token_id in torch.topk(logits[1], 10).indices.tolist()


def test_seeded_sampling_distribution_follows_temperature() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    params = [SamplingParams(temperature=1.0, seed=s) for s in range(2000)]
    counts = torch.zeros(3)
    sampler = Sampler()
    for r in sampler.sample(logits.expand(2000, 3), params, [0] * 2000):
        counts[r.token_id] += 1
    expected = torch.softmax(logits[0], -1) * 2000
    assert ((counts - expected).abs() < 5 * expected.sqrt() + 5).all()


def test_find_stop() -> None:
    assert find_stop("hello world", ["wor", "lo"]) == 3
    assert find_stop("hello", ["x"]) is None
    assert find_stop("abcabc", ["abc"], start=1) == 3


@pytest.fixture(scope="module")
def model_with_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fineserve.execution.tokenizer_train import save_hf_tokenizer, train_tokenizer

    folder = make_tiny("llama", tmp_path_factory.mktemp("tok") / "m", seed=4, vocab_size=320)
    save_hf_tokenizer(train_tokenizer(320, n_lines=300), folder, 512)
    return folder


def test_seeded_generation_reproducible_and_batch_independent(
    model_with_tokenizer: Path,
) -> None:
    llm = LLM({"m": model_with_tokenizer}, arena_bytes=1 << 20)
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=11, max_tokens=8, ignore_eos=True)
    alone = llm.generate([[5, 6, 7]], p)[0].token_ids
    other = SamplingParams(temperature=0.7, seed=3, max_tokens=5, ignore_eos=True)
    batched = llm.generate([[9, 9], [5, 6, 7], [1, 2, 3, 4]], [other, p, other])
    assert batched[1].token_ids == alone
    assert llm.generate([[5, 6, 7]], p)[0].token_ids == alone


def test_stop_strings_and_stop_tokens(model_with_tokenizer: Path) -> None:
    llm = LLM({"m": model_with_tokenizer}, arena_bytes=1 << 20)
    base = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    full = llm.generate("the quick model", base)[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 24
    stop = full.text[len(full.text) // 2 :][:3]
    if not stop.strip():
        pytest.skip("generated text too short to pick a stop string")
    cut = llm.generate("the quick model", SamplingParams(**{**_kw(base), "stop": (stop,)}))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    tok = full.token_ids[5]
    by_id = llm.generate(
        "the quick model", SamplingParams(**{**_kw(base), "stop_token_ids": (tok,)})
    )
    first = full.token_ids.index(tok)
    assert by_id[0].token_ids == full.token_ids[: first + 1]
    assert by_id[0].finish_reason == "stop"


def _kw(p: SamplingParams) -> dict[str, object]:
    return {f: getattr(p, f) for f in p.__dataclass_fields__}
