"""Sampling parameters and the sampler (greedy, temperature, top-k, top-p, seeds, logprobs).

Reproducibility: a request with a `seed` draws its n-th token from a generator seeded by
`(seed, n)` alone, so its output does not depend on what else is in the batch, on batch order
or on preemption-and-recompute. Logprobs are those of the model's raw distribution
(log-softmax of the logits, before temperature/top-k/top-p).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

_SEED_MIX = 0x9E3779B97F4A7C15
_MASK63 = (1 << 63) - 1


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens for one request. `temperature == 0` means greedy.

    `top_k` None/0/-1 disables top-k; `top_p == 1` disables top-p. `stop` strings end the
    output (the stop string itself is not returned); `stop_token_ids` end it after that token
    (returned); the model's EOS does too unless `ignore_eos`. `logprobs=n` returns the chosen
    token's logprob and the n most likely tokens' logprobs.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None

    def __post_init__(self) -> None:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        if self.top_k in (0, -1):
            object.__setattr__(self, "top_k", None)
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be >= 1 (or None/0/-1 to disable), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or self.logprobs < 0):
            raise ValueError(f"logprobs must be an integer >= 0 or None, got {self.logprobs!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be non-empty strings, got {self.stop!r}")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be token ids >= 0, got {self.stop_token_ids!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class SampleResult:
    """One sampled token; `top_logprobs` (token -> logprob, most likely first) when asked."""

    token_id: int
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None


def seeded_generator(seed: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, index)."""
    mixed = (seed * _SEED_MIX + index * 0x2545F4914F6CDD1D + 1) & _MASK63
    return torch.Generator().manual_seed(mixed)


def mask_top_k_top_p(logits: torch.Tensor, top_k: int | None, top_p: float) -> torch.Tensor:
    """Logits [V] with tokens outside top-k / the top-p nucleus set to -inf (>= 1 kept)."""
    out = logits.clone()
    if top_k is not None and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k).values[-1]
        out[out < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs
        drop = before > top_p
        drop[0] = False
        out[order[drop]] = float("-inf")
    return out


class Sampler:
    """Turns logits [S, V] into one `SampleResult` per row. Holds the generator used by
    unseeded requests (per instance, so two samplers never share random state)."""

    def __init__(self, seed: int | None = None) -> None:
        self._generator = torch.Generator()
        if seed is not None:
            self._generator.manual_seed(seed)

    def sample(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        output_index: Sequence[int],
    ) -> list[SampleResult]:
        """`output_index[i]`: how many tokens row i's request has generated before this one."""
        logits = logits.float()
        tokens = torch.argmax(logits, dim=-1)
        for i, p in enumerate(params):
            if not p.greedy:
                tokens[i] = self._draw(logits[i], p, output_index[i])
        want = [p.logprobs is not None for p in params]
        logprobs = torch.log_softmax(logits, dim=-1) if any(want) else None
        ids = tokens.tolist()
        results = []
        for i, p in enumerate(params):
            if logprobs is None or p.logprobs is None:
                results.append(SampleResult(ids[i]))
                continue
            row = logprobs[i]
            top: dict[int, float] = {}
            if p.logprobs > 0:
                vals, idx = torch.topk(row, min(p.logprobs, row.shape[0]))
                top = dict(zip(idx.tolist(), vals.tolist(), strict=True))
            results.append(SampleResult(ids[i], float(row[ids[i]]), top))
        return results

    def _draw(self, logits: torch.Tensor, p: SamplingParams, index: int) -> int:
        masked = mask_top_k_top_p(logits / p.temperature, p.top_k, p.top_p)
        probs = torch.softmax(masked, dim=-1)
        gen = self._generator if p.seed is None else seeded_generator(p.seed, index)
        return int(torch.multinomial(probs, 1, generator=gen))


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index in `text` where the earliest stop string begins (searching from `start`)."""
    hits = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None
