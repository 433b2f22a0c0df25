"""Clocks. The only module of FineServe's engine and scheduler layers that reads the wall clock.

The engine asks its `Clock` for `now()` and tells it how long a step took with `advance()`.
`WallClock` reads `time.monotonic()` and ignores `advance` (real time moved by itself);
`VirtualClock` only moves when told, so a simulated run is deterministic and instant.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Source of `now` in seconds. Invariant: successive `now()` values never decrease."""

    def now(self) -> float: ...

    def advance(self, seconds: float) -> None:
        """A step of `seconds` just ran (virtual clocks move; the wall clock ignores it)."""

    def sleep_until(self, t: float) -> None:
        """Wait (or jump, for a virtual clock) until `now() >= t`."""


class WallClock:
    """Monotonic wall time in seconds since this clock was made."""

    def __init__(self) -> None:
        self._origin = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._origin

    def advance(self, seconds: float) -> None:
        return None

    def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay)


class VirtualClock:
    """Simulated time: starts at `start` and moves only by `advance` / `sleep_until`."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        self._now += seconds

    def sleep_until(self, t: float) -> None:
        self._now = max(self._now, t)


def perf_counter() -> float:
    """High-resolution timer for measuring code (profiling, scheduler overhead)."""
    return time.perf_counter()
