"""A request's state inside the local scheduler (mutable, owned by the scheduler only).

Invariants:
- `tokens` is the prompt followed by every output token; `num_computed` of them have KV in
  `pages` (`num_computed <= len(tokens)`), and `pages` holds exactly the pages those tokens need
  or a few more (allocated for the chunk being run).
- A preempted sequence has no pages and `num_computed == 0`; its outputs are kept, so it is
  recomputed by one prefill over prompt + outputs.
- A decoding sequence (fed every token but its last) may be *tracked*: `num_computed` is then
  derived as `len(tokens) - 1` (it advances with each appended token), and `last_token_s` may
  read a `Stamp` shared by a model's decodes (one write per step instead of one per sequence;
  a stamp is changed only while every sequence pointing to it received a token at that time).
  Assigning either attribute makes it explicit again. The scheduler's `DecodeCols` does this.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import Enum
from typing import Any


class Status(str, Enum):
    WAITING = "waiting"  # no KV yet (new, or preempted)
    RUNNING = "running"  # holds pages: prefilling in chunks, or decoding
    FINISHED = "finished"


class Stamp:
    """A time shared by the decodes of one model that last got a token together (see the
    module docstring)."""

    __slots__ = ("t",)

    def __init__(self, t: float | None = None) -> None:
        self.t = t


class Sequence:
    """One request. `deadline_s` is its TTFT deadline (inf without a TTFT SLO)."""

    __slots__ = (
        "_computed",
        "_last",
        "arrival_s",
        "best_effort",
        "deadline_s",
        "delivered",
        "end_len",
        "finish_reason",
        "first_token_s",
        "max_tokens",
        "model",
        "num_preemptions",
        "num_prompt",
        "pages",
        "prefill_alone_s",
        "request_id",
        "sampling",
        "status",
        "stop_token_ids",
        "stream",
        "tokens",
    )

    def __init__(
        self,
        request_id: str,
        model: str,
        prompt_token_ids: Iterable[int],
        max_tokens: int,
        arrival_s: float,
        ttft_slo_s: float | None = None,
        sampling: Any = None,
        stop_token_ids: frozenset[int] = frozenset(),
        stream: bool = True,
        max_model_len: int | None = None,
    ) -> None:
        self.request_id = request_id
        self.model = model
        self.tokens: list[int] = list(prompt_token_ids)
        self.num_prompt = len(self.tokens)
        self.max_tokens = max_tokens
        self.arrival_s = arrival_s
        self.deadline_s = arrival_s + ttft_slo_s if ttft_slo_s is not None else math.inf
        self.sampling = sampling
        self.stop_token_ids = stop_token_ids
        self.pages: list[int] = []
        self._computed = 0  # -1: tracked decode (see `num_computed`)
        self.status = Status.WAITING
        self.first_token_s: float | None = None
        self._last: float | Stamp | None = None  # see `last_token_s`
        self.num_preemptions = 0
        self.best_effort = False
        self.prefill_alone_s: float | None = None
        self.finish_reason: str | None = None
        self.stream = stream  # an output per token (else: first token, then the rest at the end)
        self.delivered = 0  # output tokens delivered so far (kept for stream=False only)
        end = self.num_prompt + max_tokens  # it ends at this many tokens (max_tokens or context)
        self.end_len = end if max_model_len is None else min(end, max_model_len)

    @property
    def num_computed(self) -> int:
        """Tokens with KV in `pages` (`len(tokens) - 1` while tracked as a decode)."""
        n = self._computed
        return len(self.tokens) - 1 if n < 0 else n

    @num_computed.setter
    def num_computed(self, value: int) -> None:
        self._computed = value

    def track_decode(self) -> None:
        """Derive `num_computed` from `tokens` from now on (a decode: all but the last fed)."""
        self._computed = -1

    @property
    def last_token_s(self) -> float | None:
        """When the last token was sampled (None before the first)."""
        last = self._last
        return last.t if last.__class__ is Stamp else last

    @last_token_s.setter
    def last_token_s(self, value: float | None) -> None:
        self._last = value

    @property
    def num_output(self) -> int:
        return len(self.tokens) - self.num_prompt

    @property
    def pending(self) -> int:
        """Tokens still to feed before the next token can be sampled."""
        return len(self.tokens) - self.num_computed

    @property
    def is_decode(self) -> bool:
        return (
            self.num_computed > 0
            and len(self.tokens) - self.num_computed == 1
            and (len(self.tokens) > self.num_prompt)
        )

    @property
    def fresh(self) -> bool:
        """Never started: no KV and no output yet."""
        return self.num_computed == 0 and len(self.tokens) == self.num_prompt

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id!r}, {self.model!r}, {self.status.value}, "
            f"computed={self.num_computed}/{len(self.tokens)}, pages={len(self.pages)})"
        )
