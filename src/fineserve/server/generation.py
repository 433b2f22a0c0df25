"""From an API request to text pieces: sampling options, detokenization, stop strings, timing.

`TextGeneration` wraps one backend stream. Invariants:
- the concatenation of every `Piece.text` is the output text, cut before the first stop string
  (which is never returned); text that might begin a stop string is held back until it cannot;
- when a stop string matches, the backend stream is closed at once, which aborts the request
  and frees its pages; the finish reason is "stop";
- `completion_tokens` counts every token the backend produced for this request;
- a `BackendError` raised by the backend stream (a lost replica: 503) leaves as the matching
  `APIError`, so the API answers it with its status, or as a final SSE error event.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from fineserve.engine.step import REJECTED
from fineserve.server.backend import (
    Backend,
    BackendError,
    Delta,
    ModelInfo,
    SamplingOptions,
    TokenLogprob,
)
from fineserve.server.codec import IncrementalDetokenizer
from fineserve.server.errors import APIError


@dataclass(frozen=True)
class Piece:
    """Text new since the last piece, its tokens and logprobs; `finish_reason` on the last."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: str | None = None


@dataclass
class Timing:
    """Monotonic times of one request, for metrics."""

    arrival: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    token_times: list[float] = field(default_factory=list)
    finish: float | None = None


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sampling_options(
    *,
    max_tokens: int | None,
    room: int,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    seed: int | None,
    logprobs: int | None,
    ignore_eos: bool | None,
    stop_token_ids: Sequence[int] | None,
) -> SamplingOptions:
    """Options for a prompt that leaves `room` tokens of context; 400 when max_tokens > room."""
    if max_tokens is not None and max_tokens > room:
        raise APIError(
            400,
            f"max_tokens={max_tokens} exceeds the {room} tokens left in the model's context",
            param="max_tokens",
        )
    return SamplingOptions(
        max_tokens=max_tokens if max_tokens is not None else room,
        temperature=1.0 if temperature is None else float(temperature),
        top_p=1.0 if top_p is None else float(top_p),
        top_k=None if top_k in (None, 0, -1) else top_k,
        seed=None if seed is None else int(seed) & ((1 << 63) - 1),
        logprobs=logprobs,
        ignore_eos=bool(ignore_eos),
        stop_token_ids=tuple(stop_token_ids or ()),
    )


def check_prompt(info: ModelInfo, ids: Sequence[int]) -> None:
    """400 for an empty prompt or bad token ids, 413 for one that leaves no room to generate."""
    if not ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    vocab = getattr(info.codec.tokenizer, "get_vocab_size", None)
    limit = vocab() if callable(vocab) else None
    if any(t < 0 or (limit is not None and t >= limit) for t in ids):
        raise APIError(400, "the prompt has token ids outside the vocabulary", param="prompt")
    if len(ids) >= info.max_model_len:
        raise APIError(
            413,
            f"the prompt has {len(ids)} tokens; model {info.name!r} takes at most "
            f"{info.max_model_len - 1} (its context is {info.max_model_len})",
            param="prompt",
            code="context_length_exceeded",
        )


class TextGeneration:
    """One request's output as text pieces (see the module docstring)."""

    def __init__(
        self,
        backend: Backend,
        info: ModelInfo,
        request_id: str,
        deltas: AsyncIterator[Delta],
        stop: Sequence[str],
        prompt_tokens: int,
    ) -> None:
        self.backend = backend
        self.info = info
        self.request_id = request_id
        self.deltas = deltas
        self.stop = tuple(s for s in stop if s)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.observed = False  # counted in the metrics
        self.timing = Timing()
        self._detok = IncrementalDetokenizer(info.codec)
        self._pending = ""
        self._hold = max((len(s) for s in self.stop), default=1) - 1

    async def pieces(self) -> AsyncIterator[Piece]:
        """Stream the pieces; the last one has `finish_reason` set."""
        try:
            async for delta in self.deltas:
                piece = self._apply(delta)
                if piece is not None:
                    yield piece
                if self.finish_reason is not None:
                    return
        except BackendError as exc:
            raise APIError.from_backend(exc) from None
        finally:
            if self.timing.finish is None:
                self.timing.finish = time.monotonic()
            aclose = getattr(self.deltas, "aclose", None)
            if aclose is not None:
                await aclose()

    def _apply(self, delta: Delta) -> Piece | None:
        now = time.monotonic()
        if delta.token_ids:
            self.completion_tokens += len(delta.token_ids)
            self.timing.first_token = self.timing.first_token or now
            self.timing.token_times.extend([now] * len(delta.token_ids))
        if (
            delta.finished
            and delta.finish_reason in (REJECTED, "error")
            and not (self.completion_tokens)
        ):
            self.finish_reason = delta.finish_reason
            if delta.finish_reason == REJECTED:
                raise APIError(429, delta.error or "the request cannot meet its SLO now",
                               code="slo_unattainable", retry_after_s=1)  # fmt: skip
            raise APIError(500, delta.error or "the engine failed", code="engine_error")
        self._pending += self._detok.push(delta.token_ids)
        text, reason = self._cut_stop()
        if reason is None and delta.finished:
            reason = _api_reason(delta.finish_reason)
            text += self._pending
            self._pending = ""
        if reason is not None:
            self.finish_reason = reason
            self.timing.finish = now
        if not text and not delta.token_ids and reason is None:
            return None
        return Piece(text, delta.token_ids, delta.logprobs or (), reason)

    def _cut_stop(self) -> tuple[str, str | None]:
        """Text safe to emit now, and "stop" when a stop string was found."""
        if not self.stop:
            text, self._pending = self._pending, ""
            return text, None
        hits = [i for s in self.stop if (i := self._pending.find(s)) >= 0]
        if hits:
            text, self._pending = self._pending[: min(hits)], ""
            return text, "stop"
        keep = min(self._hold, len(self._pending))
        cut = len(self._pending) - keep
        text, self._pending = self._pending[:cut], self._pending[cut:]
        return text, None


def _api_reason(reason: str | None) -> str:
    """Engine finish reasons -> OpenAI's ("stop", "length"; others pass through)."""
    return reason or "stop"
