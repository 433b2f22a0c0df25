"""Step-time noise of a shared machine: a measured, seeded multiplicative factor on step times.

A table predicts the *mean* step time; on a CPU shared with other processes the real steps
scatter around it, and not independently: the machine has slow spells (another process
competing for the core's caches and memory bandwidth) lasting many steps. Queues build up
during a slow spell, which widens the latency tails beyond what a deterministic table gives.

`StepNoise` describes that scatter as the log of the factor real / predicted being the sum of

- a *fast* part, independent per step, variance ``sigma_fast**2``, and
- a *slow* part, an Ornstein-Uhlenbeck process over executed seconds with stationary variance
  ``sigma_slow**2`` and correlation time ``tau_slow_s`` (correlation exp(-dt / tau)),

and the factor is exp(log part - variance / 2), so its mean is 1 (the table keeps predicting the
mean). `estimate_step_noise` measures the three numbers from timed steps of profile probes
(their predictions by the table, their times and when they ran); `NoiseProcess` draws the
factors of a simulation from a seed; `NoisyCostModel` applies them to a cost model's answers
(for a simulator's executor). The default `StepNoise()` is no noise (the H100 table has
none: its simulations stay deterministic and bit-identical).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fineserve.costmodel.base import BatchShape, InstanceKey, inner_decode_times

TAUS_S = tuple(0.005 * 2.0 ** (k / 2) for k in range(27))  # 5 ms .. ~41 s, candidate tau_slow


@dataclass(frozen=True)
class StepNoise:
    """Parameters of the multiplicative step-time noise (see the module docstring).

    Invariant: every field >= 0; `tau_slow_s` > 0 whenever `sigma_slow` > 0."""

    sigma_fast: float = 0.0
    sigma_slow: float = 0.0
    tau_slow_s: float = 0.0

    @property
    def off(self) -> bool:
        """True when every factor is exactly 1."""
        return self.sigma_fast <= 0.0 and self.sigma_slow <= 0.0

    @property
    def sigma(self) -> float:
        """Standard deviation of the log factor (both parts)."""
        return math.sqrt(self.sigma_fast**2 + self.sigma_slow**2)

    def as_dict(self) -> dict[str, float]:
        return {
            "sigma_fast": self.sigma_fast,
            "sigma_slow": self.sigma_slow,
            "tau_slow_s": self.tau_slow_s,
        }


class NoiseProcess:
    """The factors of one simulation: seeded, so the same seed and the same sequence of step
    durations give the same factors. Time is the executed (noiseless) work: the slow part
    moves by each step's duration."""

    def __init__(self, noise: StepNoise, seed: int = 0) -> None:
        self.noise = noise
        self.rng = random.Random(seed)
        # the slow part starts in its stationary distribution
        self.slow = self.rng.gauss(0.0, noise.sigma_slow) if noise.sigma_slow > 0 else 0.0
        self.shift = (noise.sigma_fast**2 + noise.sigma_slow**2) / 2.0

    def factor(self, duration_s: float) -> float:
        """The factor of the next step, whose noiseless duration is `duration_s` (>= 0); the
        slow part then advances by that duration. Exactly 1.0 when the noise is off."""
        n = self.noise
        if n.off:
            return 1.0
        x = self.slow
        if n.sigma_fast > 0:
            x += self.rng.gauss(0.0, n.sigma_fast)
        if n.sigma_slow > 0:
            a = math.exp(-max(0.0, duration_s) / n.tau_slow_s)
            self.slow = a * self.slow + math.sqrt(1.0 - a * a) * self.rng.gauss(0.0, n.sigma_slow)
        return math.exp(x - self.shift)


def estimate_step_noise(
    steps: Sequence[tuple[float, float, float]], max_lag_s: float = 30.0
) -> StepNoise:
    """Noise parameters from timed steps [(start_s, predicted_s, measured_s)] (start on one
    timeline, e.g. the process's CPU seconds; predicted by the table that will be simulated).

    x = log(measured / predicted), centred (the table's overall bias is not noise). Its
    variance is the total; the covariance of pairs of steps, averaged in bins of their time
    apart (log-spaced, pairs further than `max_lag_s` left out), is fitted as
    ``sigma_slow**2 * exp(-dt / tau)`` by least squares over the bins (``tau`` from `TAUS_S`,
    ``sigma_slow**2`` at most the total); the rest of the variance is the fast part. Fewer than
    three usable steps: no noise."""
    pts = [(t, p, m) for t, p, m in steps if p > 0 and m > 0]
    if len(pts) < 3:
        return StepNoise()
    start = np.array([t for t, _, _ in pts])
    x = np.log(np.array([m / p for _, p, m in pts]))
    x -= x.mean()
    total = float(np.mean(x * x))
    if total <= 0:
        return StepNoise()
    order = np.argsort(start, kind="stable")
    start, x = start[order], x[order]
    i, j = np.triu_indices(len(x), k=1)
    dt = start[j] - start[i]
    keep = (dt > 0) & (dt <= max_lag_s)
    dt, prod = dt[keep], x[i[keep]] * x[j[keep]]
    if dt.size == 0:
        return StepNoise(sigma_fast=math.sqrt(total))
    edges = np.geomspace(max(float(dt.min()), 1e-4), float(dt.max()) * (1 + 1e-9), 25)
    which = np.clip(np.searchsorted(edges, dt, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(which, minlength=len(edges) - 1)
    used = counts > 0
    lag = (np.bincount(which, weights=dt, minlength=len(edges) - 1)[used]) / counts[used]
    cov = (np.bincount(which, weights=prod, minlength=len(edges) - 1)[used]) / counts[used]
    best: tuple[float, float, float] | None = None  # residual, variance, tau
    for tau in TAUS_S:
        e = np.exp(-lag / tau)
        var = float(np.clip((cov @ e) / (e @ e), 0.0, total))
        res = float(np.sum((cov - var * e) ** 2))
        if best is None or res < best[0] - 1e-18:
            best = (res, var, tau)
    assert best is not None
    _, var_slow, tau = best
    return StepNoise(
        sigma_fast=math.sqrt(max(0.0, total - var_slow)),
        sigma_slow=math.sqrt(var_slow),
        tau_slow_s=tau if var_slow > 0 else 0.0,
    )


class NoisyCostModel:
    """A cost model whose answers carry the noise of `process`: what a simulator's executor
    (not its scheduler, whose predictions stay the table's) costs steps with. Every
    `step_time` call, and every iteration of a `decode_step_times` call, is one step: its
    time is the inner model's times its own factor, and the noise's clock moves by the inner
    time. Not a pure function: the same batch costs differently from call to call."""

    def __init__(self, inner: Any, process: NoiseProcess) -> None:
        self.inner = inner
        self.process = process
        self.interference = getattr(inner, "interference", None)

    def supports(self, key: InstanceKey) -> bool:
        return bool(self.inner.supports(key))

    def step_time(self, key: InstanceKey, batch: BatchShape) -> float:
        t = float(self.inner.step_time(key, batch))
        return t * self.process.factor(t)

    def decode_step_times(
        self, key: InstanceKey, contexts: tuple[int, ...] | list[int], k: int
    ) -> list[float]:
        """`step_time` of k consecutive decode iterations (iteration j: every context + j)."""
        times = inner_decode_times(self.inner, key, contexts, k)
        factor = self.process.factor
        return [t * factor(t) for t in times]
