"""The offline API: several models loaded into one KV arena, batch generation.

    llm = LLM(models={"a": "/path/a", "b": "/path/b"}, arena_bytes=64 << 20, kv_dtype={"b": "int8"})
    outs = llm.generate(["Hello", [1, 2, 3]], SamplingParams(max_tokens=8), model="a")

One torch uint8 tensor is the arena; KV Slab (`make_allocator("slab", ...)`) hands out each
model's page ids; every model sees its pages through its own strided per-layer views. A
first-come scheduler (`offline.OfflineScheduler`) batches requests; models named together in
one `generate` call take turns step by step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fineserve.execution.instance import (
    DEFAULT_ATTENTION_BACKEND,
    ModelInstance,
    load_instance,
)
from fineserve.execution.offline import OfflineScheduler, SeqState
from fineserve.execution.sampling import SampleResult, SamplingParams, find_stop
from fineserve.memory.allocator import ModelKV
from fineserve.memory.registry import make_allocator


@dataclass(frozen=True)
class RequestOutput:
    """One finished request. `finish_reason` is "stop" or "length"."""

    request_id: int
    model: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[float | None] | None = None
    top_logprobs: list[dict[int, float] | None] | None = None


class LLM:
    """Models sharing one arena. `kv_dtype` / `dtype`: one value for all, or per model name.
    `attention_backend`: a name from `attention.default_backends()` ("cpu": the fast CPU path,
    "torch": the reference)."""

    def __init__(
        self,
        models: Mapping[str, str | Path],
        arena_bytes: int = 256 << 20,
        kv_dtype: str | Mapping[str, str | None] | None = None,
        dtype: str | torch.dtype | Mapping[str, Any] | None = None,
        tokens_per_page: int = 16,
        max_batched_tokens: int = 512,
        max_seqs: int = 64,
        scheme: str = "slab",
        seed: int | None = None,
        attention_backend: str = DEFAULT_ATTENTION_BACKEND,
    ) -> None:
        if not models:
            raise ValueError("LLM needs at least one model: models={'name': 'path'}")
        loaded = {
            name: load_instance(
                Path(path), _pick(dtype, name), _pick(kv_dtype, name), tokens_per_page, seed
            )
            for name, path in models.items()
        }
        specs = [ModelKV(name, inst.kv_format) for name, inst in loaded.items()]
        self.allocator = make_allocator(scheme, arena_bytes, specs)
        self.arena = torch.zeros(arena_bytes, dtype=torch.uint8)
        self.instances: dict[str, ModelInstance] = {}
        for name, inst in loaded.items():
            inst.attach(self.arena, self.allocator, name, attention_backend)
            self.instances[name] = inst
        self.max_batched_tokens = max_batched_tokens
        self.max_seqs = max_seqs
        self._next_id = 0

    @property
    def model_names(self) -> list[str]:
        return list(self.instances)

    def generate(
        self,
        prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        model: str | Sequence[str] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt (text or token ids); outputs in prompt order."""
        batch = _as_prompt_list(prompts)
        params = _broadcast(sampling_params or SamplingParams(), len(batch), "sampling_params")
        names = _broadcast(model or self._default_model(), len(batch), "model")
        seqs = [self._make_seq(p, sp, m) for p, sp, m in zip(batch, params, names, strict=True)]
        runners = {name: inst.runner for name, inst in self.instances.items()}
        scheduler = OfflineScheduler(
            self.allocator, runners, self._finish, self.max_batched_tokens, self.max_seqs
        )
        for seq in seqs:
            scheduler.add(seq)
        scheduler.run()
        return [self._output(seq) for seq in seqs]

    def _default_model(self) -> str:
        if len(self.instances) != 1:
            raise ValueError(f"several models are loaded; pass model= one of {self.model_names}")
        return self.model_names[0]

    def _make_seq(
        self, prompt: str | Sequence[int], params: SamplingParams, model: str
    ) -> SeqState:
        if model not in self.instances:
            raise ValueError(f"unknown model {model!r}; loaded: {self.model_names}")
        if not isinstance(params, SamplingParams):
            raise TypeError(f"expected SamplingParams, got {type(params).__name__}")
        ids = self.instances[model].encode(prompt)
        self._next_id += 1
        return SeqState(self._next_id, model, ids, params)

    def _finish(self, seq: SeqState, result: SampleResult) -> None:
        """Record a sampled token and decide whether the request is done."""
        inst = self.instances[seq.model]
        p = seq.params
        seq.output.append(result.token_id)
        if p.logprobs is not None:
            seq.logprobs.append(result.logprob)
            seq.top_logprobs.append(result.top_logprobs)
        if inst.tokenizer is not None:
            previous = len(seq.text)
            seq.text = inst.decode(seq.output)
            cut = find_stop(seq.text, p.stop, max(0, previous - max(map(len, p.stop), default=0)))
            if cut is not None:
                seq.text = seq.text[:cut]
                seq.finish_reason = "stop"
                return
        token = result.token_id
        if token in p.stop_token_ids or (not p.ignore_eos and token in inst.eos_token_ids):
            seq.finish_reason = "stop"
        elif len(seq.output) >= p.max_tokens or len(seq.tokens) >= inst.max_model_len:
            seq.finish_reason = "length"

    def _output(self, seq: SeqState) -> RequestOutput:
        want = seq.params.logprobs is not None
        return RequestOutput(
            request_id=seq.seq_id,
            model=seq.model,
            prompt_token_ids=seq.prompt,
            token_ids=list(seq.output),
            text=seq.text,
            finish_reason=seq.finish_reason or "length",
            logprobs=list(seq.logprobs) if want else None,
            top_logprobs=list(seq.top_logprobs) if want else None,
        )


def _pick(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else value


def _as_prompt_list(prompts: Any) -> list[str | Sequence[int]]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]
    if not prompts:
        raise ValueError("generate() needs at least one prompt")
    return prompts


def _broadcast(value: Any, n: int, what: str) -> list[Any]:
    if isinstance(value, (str, SamplingParams)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{what}: got {len(values)} values for {n} prompts")
    return values
