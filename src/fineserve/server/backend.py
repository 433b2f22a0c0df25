"""The interface between the HTTP layer and whatever generates tokens (a "backend").

The server only talks to a `Backend`: the in-process engine (`inprocess.InProcessBackend`) by
default, a gateway that routes to Ray actors later. A backend is asyncio-native: `generate`
submits a request (raising `BackendError` at once when it cannot be accepted) and returns an
async iterator of `Delta`s; leaving that iteration early, or `abort(request_id)`, ends the
request and frees everything it held. Nothing here imports torch.

Invariants:
- the last `Delta` of a stream has `finished=True` and a `finish_reason`; no delta follows it;
- a request id is unique among live requests of one backend;
- `stats()` is a consistent snapshot that can be read from the event loop at any time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from fineserve.server.codec import TextCodec


@dataclass(frozen=True)
class SamplingOptions:
    """Per-request sampling (no torch): `temperature == 0` is greedy; `logprobs` None = off."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    logprobs: int | None = None
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class GenerateRequest:
    """One request as a backend sees it: already tokenized."""

    request_id: str
    model: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingOptions


@dataclass(frozen=True)
class TokenLogprob:
    """Logprob of a sampled token and the top alternatives (token id -> logprob)."""

    token_id: int
    logprob: float
    top: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Delta:
    """Tokens new since the previous delta; `logprobs` aligned with `token_ids` when asked.

    `finish_reason` (set only when finished): "stop", "length", "abort", "rejected", "error".
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None = None
    finished: bool = False
    finish_reason: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What the API layer needs to know about a served model."""

    name: str
    max_model_len: int
    codec: TextCodec
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    max_queue: int = 256
    created: int = 0
    owned_by: str = "fineserve"


@dataclass(frozen=True)
class ModelLoad:
    """Live request counts of one model."""

    running: int = 0
    waiting: int = 0


@dataclass(frozen=True)
class KVStats:
    """KV Slab occupancy: per model slabs held and pages used; arena-wide byte accounting."""

    arena_bytes: int = 0
    free_bytes: int = 0
    stranded_bytes: int = 0
    edge_bytes: int = 0
    free_slabs: int = 0
    slab_bytes: int = 0
    slabs: Mapping[str, int] = field(default_factory=dict)
    used_pages: Mapping[str, int] = field(default_factory=dict)
    used_bytes: Mapping[str, int] = field(default_factory=dict)

    @property
    def usage_fraction(self) -> float:
        """Share of the arena not free (0 when there is no arena)."""
        if self.arena_bytes <= 0:
            return 0.0
        return 1.0 - self.free_bytes / self.arena_bytes


@dataclass(frozen=True)
class BackendStats:
    """A snapshot for `/metrics` and the demo."""

    load: Mapping[str, ModelLoad]
    kv: KVStats
    preemptions: Mapping[str, int] = field(default_factory=dict)


BACKEND_STATUS: Mapping[str, int] = {
    "invalid": 400,
    "too_large": 413,
    "unknown_model": 404,
    "queue_full": 429,
    "unavailable": 503,
}
BACKEND_CODES: Mapping[str, str] = {
    "too_large": "context_length_exceeded",
    "unknown_model": "model_not_found",
    "queue_full": "queue_full",
    "unavailable": "shutting_down",
}


class BackendError(Exception):
    """A request the backend refuses, at submission or while it runs. `kind`: "invalid",
    "too_large", "unknown_model", "queue_full", "unavailable"; `status` is the HTTP status the
    server answers with (`BACKEND_STATUS`, 500 for an unknown kind); `code` the OpenAI error
    code (default from `BACKEND_CODES`). Raised from a stream after its first delta, it reaches
    a streaming client as a final SSE error event."""

    def __init__(
        self,
        kind: str,
        message: str,
        retry_after_s: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after_s = retry_after_s
        self.code = code if code is not None else BACKEND_CODES.get(kind)

    @property
    def status(self) -> int:
        return BACKEND_STATUS.get(self.kind, 500)


class BackendUnavailable(BackendError):
    """No replica can serve the request now, or the one serving it was lost (HTTP 503, with
    Retry-After): the client may retry."""

    def __init__(
        self, message: str, retry_after_s: float | None = 1.0, code: str = "unavailable"
    ) -> None:
        super().__init__("unavailable", message, retry_after_s, code)


@runtime_checkable
class Backend(Protocol):
    """What the HTTP layer needs from a token generator (see the module docstring)."""

    def models(self) -> Sequence[ModelInfo]: ...

    async def start(self) -> None: ...

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new requests, wait for in-flight ones (up to the timeout), then release."""

    def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]: ...

    def abort(self, request_id: str) -> None: ...

    def stats(self) -> BackendStats: ...

    def in_flight(self) -> int: ...
