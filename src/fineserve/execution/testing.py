"""Test and benchmark helpers: tiny random HF models made on the fly, simple runner drivers.

Not used by the serving path; imports transformers (a dependency) to build reference models.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers

from fineserve.execution.attention import default_backends
from fineserve.execution.batch import SeqChunk
from fineserve.execution.kv_views import KVCache
from fineserve.execution.loader import LoadedModel, load_model
from fineserve.execution.runner import ModelRunner
from fineserve.execution.sampling import SamplingParams
from fineserve.memory.formats import KVDtype, KVFormat

CONFIGS = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
}
GREEDY = SamplingParams(temperature=0, max_tokens=1)


def make_tiny(arch: str, folder: Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a tiny random `arch` model (GQA: 4 query heads, 2 KV heads) into `folder`."""
    kwargs: dict[str, Any] = {
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "initializer_range": 0.08,
        "eos_token_id": None,
        "bos_token_id": None,
        "pad_token_id": None,
    }
    if arch == "qwen3":
        kwargs["head_dim"] = 32
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[arch](**kwargs))
    model = model.to(torch.float32).eval()
    model.save_pretrained(folder)
    return folder


def hf_greedy(folder: Path, prompt: Sequence[int], new_tokens: int) -> list[int]:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([list(prompt)])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def make_runner(
    loaded: LoadedModel,
    kv_dtype: KVDtype | str | None = None,
    tokens_per_page: int = 4,
    num_pages: int = 256,
    arena: torch.Tensor | None = None,
    backend: str = "torch",
) -> ModelRunner:
    cfg = loaded.config
    default = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    fmt = KVFormat(
        cfg.num_layers,
        cfg.num_kv_heads,
        cfg.head_dim,
        KVDtype(kv_dtype or default[loaded.dtype]),
        tokens_per_page,
    )
    if arena is None:
        arena = torch.zeros(fmt.page_bytes * num_pages, dtype=torch.uint8)
    kv = KVCache(arena, fmt, fmt.page_bytes, arena.numel() // fmt.page_bytes, loaded.kv_scales)
    return ModelRunner(loaded.model, kv, default_backends().create(backend))


def run_greedy(
    runner: ModelRunner,
    prompts: Sequence[Sequence[int]],
    new_tokens: int,
    chunk: int | None = None,
    first_page: int = 0,
    pages_each: int = 16,
) -> list[list[int]]:
    """Greedy-decode all prompts together: (chunked) prefill of all, then batched decodes."""
    pages = [
        list(range(first_page + i * pages_each, first_page + (i + 1) * pages_each))
        for i in range(len(prompts))
    ]
    done = [0] * len(prompts)
    outs: list[list[int]] = [[] for _ in prompts]
    step = chunk or max(len(p) for p in prompts)
    while any(d < len(p) for d, p in zip(done, prompts, strict=True)):
        chunks, who = [], []
        for i, p in enumerate(prompts):
            if done[i] < len(p):
                end = min(len(p), done[i] + step)
                last = end == len(p)
                sp = GREEDY if last else None
                chunks.append(SeqChunk(i, p[done[i] : end], done[i], pages[i], sp))
                who.append(i)
                done[i] = end
        for i, r in zip(who, runner.step(chunks), strict=True):
            if r is not None:
                outs[i].append(r.token_id)
    for _ in range(new_tokens - 1):
        chunks = [
            SeqChunk(i, [outs[i][-1]], len(p) + len(outs[i]) - 1, pages[i], GREEDY)
            for i, p in enumerate(prompts)
        ]
        for i, r in enumerate(runner.step(chunks)):
            assert r is not None
            outs[i].append(r.token_id)
    return outs


def load(folder: Path, dtype: str | None = None) -> LoadedModel:
    return load_model(folder, dtype=dtype)
