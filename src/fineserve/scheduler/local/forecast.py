"""Arrival forecasts: each model's recent arrival rate and prompt length at this scheduler.

The slack policy's look-ahead admission (`SlackPolicy(lookahead=True)`) weighs the queue
against the requests expected to arrive before it drains. `ArrivalWindow` keeps a model's
last `size` submissions (arrival time, prompt tokens) and answers, at time `now`:

- `rate(now)`: submissions in the window / (now - the oldest one's arrival), so a model that
  stopped sending decays towards 0; 0 with fewer than `min_count` submissions (too little to
  tell a rate from a burst);
- `mean_prompt()`: the window's mean prompt length.

Pure bookkeeping on the times it is given (no clock). Invariant: the window holds at most
`size` entries, oldest first, and `_tokens` is the sum of their prompt lengths.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW = 64  # submissions remembered per model
MIN_COUNT = 8  # fewer than this: no rate


@dataclass(frozen=True, slots=True)
class Forecast:
    """What a model is expected to send: `rate` req/s with prompts of `mean_prompt` tokens."""

    rate: float
    mean_prompt: float


class ArrivalWindow:
    """One model's recent submissions (see the module docstring)."""

    __slots__ = ("_arrivals", "_tokens", "min_count")

    def __init__(self, size: int = WINDOW, min_count: int = MIN_COUNT) -> None:
        if size < 2 or not 1 <= min_count <= size:
            raise ValueError(f"need size >= 2 and 1 <= min_count <= size, got {size}, {min_count}")
        self._arrivals: deque[tuple[float, int]] = deque(maxlen=size)
        self._tokens = 0
        self.min_count = min_count

    def note(self, arrival_s: float, prompt_tokens: int) -> None:
        """Record one submission."""
        window = self._arrivals
        if len(window) == window.maxlen:
            self._tokens -= window[0][1]
        window.append((arrival_s, prompt_tokens))
        self._tokens += prompt_tokens

    def rate(self, now: float) -> float:
        window = self._arrivals
        if len(window) < self.min_count:
            return 0.0
        span = now - window[0][0]
        return len(window) / span if span > 0 else 0.0

    def mean_prompt(self) -> float:
        n = len(self._arrivals)
        return self._tokens / n if n else 0.0

    def forecast(self, now: float) -> Forecast:
        return Forecast(self.rate(now), self.mean_prompt())
