"""Arrival processes, popularity across models, and splitting one trace into per-model streams.

All randomness comes from a ``numpy.random.Generator`` built from an explicit seed, so the same
arguments always give the same arrivals. Times are seconds from the start of the workload;
returned arrival lists are sorted ascending and start at or after ``start_s``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fineserve.workload.traces import TraceRequest


def _check_rate(rate: float) -> None:
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")


def _gaps_to_times(gaps: np.ndarray, duration_s: float | None, start_s: float) -> list[float]:
    times = start_s + np.cumsum(gaps)
    if duration_s is not None:
        times = times[times < start_s + duration_s]
    return [float(t) for t in times]


def _count_for(rate: float, duration_s: float | None, n: int | None) -> int:
    """How many gaps to draw: ``n`` exactly, or enough to cover ``duration_s`` with margin."""
    if (n is None) == (duration_s is None):
        raise ValueError("give exactly one of n or duration_s")
    if n is not None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return n
    assert duration_s is not None
    expected = rate * duration_s
    return int(expected + 10.0 * np.sqrt(expected + 1.0) + 10)


def poisson_arrivals(
    rate: float,
    *,
    duration_s: float | None = None,
    n: int | None = None,
    seed: int = 0,
    start_s: float = 0.0,
) -> list[float]:
    """Poisson process of ``rate`` req/s: exponential gaps (CV = 1).

    Exactly one of ``n`` (that many arrivals) or ``duration_s`` (all arrivals before
    ``start_s + duration_s``) must be given.
    """
    return gamma_arrivals(rate, 1.0, duration_s=duration_s, n=n, seed=seed, start_s=start_s)


def gamma_arrivals(
    rate: float,
    cv: float,
    *,
    duration_s: float | None = None,
    n: int | None = None,
    seed: int = 0,
    start_s: float = 0.0,
) -> list[float]:
    """Gamma renewal process: mean gap ``1/rate``, coefficient of variation of gaps ``cv``.

    Shape k = 1/cv**2, scale = 1/(rate*k). cv > 1 is burstier than Poisson, cv < 1 more regular;
    cv = 1 is exactly Poisson.
    """
    _check_rate(rate)
    if not cv > 0:
        raise ValueError(f"cv must be > 0, got {cv}")
    count = _count_for(rate, duration_s, n)
    rng = np.random.default_rng(seed)
    shape = 1.0 / (cv * cv)
    gaps = rng.gamma(shape, 1.0 / (rate * shape), size=count)
    times = _gaps_to_times(gaps, duration_s, start_s)
    if duration_s is not None and len(times) == count:
        # Extremely unlikely: extend until the window is covered.
        more = gamma_arrivals(
            rate,
            cv,
            duration_s=duration_s - (times[-1] - start_s),
            seed=seed + 1,
            start_s=times[-1],
        )
        times.extend(more)
    return times


def interarrival_cv(times: Sequence[float]) -> float:
    """Coefficient of variation (std/mean) of the gaps between sorted arrival times."""
    gaps = np.diff(np.sort(np.asarray(times, dtype=float)))
    if gaps.size < 2 or gaps.mean() <= 0:
        return float("nan")
    return float(gaps.std() / gaps.mean())


def scale_trace(trace: Sequence[TraceRequest], rate_scale: float) -> list[TraceRequest]:
    """Time-compress a trace: arrivals divided by ``rate_scale`` (2.0 = twice the request rate).

    Token counts and order are unchanged; the first arrival stays where it was relative to 0.
    """
    if not rate_scale > 0:
        raise ValueError(f"rate_scale must be > 0, got {rate_scale}")
    return [TraceRequest(r.arrival_s / rate_scale, r.prompt_tokens, r.output_tokens) for r in trace]


def power_law_shares(n: int, alpha: float) -> list[float]:
    """Popularity of ``n`` models, MuxServe style: share of rank i proportional to (i+1)**-alpha.

    Shares are positive, non-increasing in rank, and sum to 1. alpha = 0 gives equal shares.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    w = np.arange(1, n + 1, dtype=float) ** (-alpha)
    return [float(x) for x in w / w.sum()]


def split_by_shares(
    trace: Sequence[TraceRequest], shares: Sequence[float], seed: int = 0
) -> list[list[TraceRequest]]:
    """Assign each trace request to model i with probability ``shares[i]`` (seeded thinning).

    Every request goes to exactly one stream; each stream stays sorted. The union keeps the
    trace's bursts at the same instants, but independent thinning pulls each stream's gap CV
    towards 1 as its share shrinks; use :func:`split_by_slices` to keep full burstiness.
    """
    p = np.asarray(shares, dtype=float)
    if p.ndim != 1 or p.size == 0 or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"shares must be non-negative with a positive sum, got {list(shares)}")
    rng = np.random.default_rng(seed)
    owner = rng.choice(p.size, size=len(trace), p=p / p.sum())
    streams: list[list[TraceRequest]] = [[] for _ in range(p.size)]
    for req, i in zip(trace, owner, strict=True):
        streams[int(i)].append(req)
    return streams


def split_by_slices(
    trace: Sequence[TraceRequest], rates: Sequence[float], duration_s: float
) -> list[list[TraceRequest]]:
    """Give model i its own disjoint time slice of the trace, rescaled to ``rates[i]`` req/s.

    The trace span is cut into ``len(rates)`` equal windows. Window i is shifted to start at 0,
    time-scaled so its mean rate equals ``rates[i]``, tiled (repeated back to back) until it
    covers ``duration_s``, and cut there. Time-scaling keeps the window's gap CV exactly, so each
    model's arrivals are as bursty as that part of the real trace. Empty windows give no arrivals.
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    ordered = sorted(trace, key=lambda r: r.arrival_s)
    if not ordered or not rates:
        return [[] for _ in rates]
    t0, t1 = ordered[0].arrival_s, ordered[-1].arrival_s
    width = max(t1 - t0, 1e-9) / len(rates)
    out: list[list[TraceRequest]] = []
    for i, rate in enumerate(rates):
        _check_rate(rate)
        lo, hi = t0 + i * width, t0 + (i + 1) * width
        last = i == len(rates) - 1
        win = [r for r in ordered if lo <= r.arrival_s < hi or (last and r.arrival_s == hi)]
        out.append(_tile_window(win, lo, width, rate, duration_s))
    return out


def _tile_window(
    win: list[TraceRequest], lo: float, width: float, rate: float, duration_s: float
) -> list[TraceRequest]:
    """Rebase a window to 0, scale it to ``rate``, and repeat it to fill ``duration_s``."""
    if not win:
        return []
    factor = len(win) / (width * rate)  # new time = old time * factor
    period = width * factor
    stream: list[TraceRequest] = []
    k = 0
    while k * period < duration_s:
        for r in win:
            t = k * period + (r.arrival_s - lo) * factor
            if t >= duration_s:
                break
            stream.append(TraceRequest(t, r.prompt_tokens, r.output_tokens))
        k += 1
    return stream


def attach_lengths(
    arrivals: Sequence[float], lengths: Sequence[tuple[int, int]], seed: int = 0
) -> list[TraceRequest]:
    """Pair arrival times with (prompt, output) lengths drawn uniformly with replacement."""
    if not lengths:
        raise ValueError("lengths must not be empty")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(lengths), size=len(arrivals))
    return [
        TraceRequest(float(t), int(lengths[j][0]), int(lengths[j][1]))
        for t, j in zip(arrivals, idx, strict=True)
    ]
