"""Request records and their summary: one module for the live load client and the simulator.

Definitions (all times in seconds on one clock; records never read the clock themselves):
- a request *completed* when ``error is None`` and both ``first_token_s`` and ``finish_s`` are
  set; anything else (dropped, rejected, failed, unfinished) is *failed* and misses every SLO;
- TTFT = first_token_s - arrival_s; E2E = finish_s - arrival_s;
- TPOT = (finish_s - first_token_s) / (output_tokens - 1), only for outputs of 2+ tokens;
- ITL = gaps between consecutive ``token_times_s`` (absolute time of every output token,
  first included) where the client recorded them;
- a request meets its SLO when it completed, TTFT <= slo_ttft_s (if set) and TPOT <= slo_tpot_s
  (if set; a 1-token output has no TPOT and passes that part);
- SLO attainment = met / all requests; goodput = met / duration_s; tokens/s = output tokens of
  completed requests / duration_s; throughput_rps = completed / duration_s.
Percentiles use numpy's default linear interpolation; an empty set gives ``None``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    """What happened to one request (mutable: the live client fills it in as tokens arrive)."""

    model: str
    arrival_s: float
    first_token_s: float | None = None
    finish_s: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    token_times_s: list[float] = field(default_factory=list)
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    error: str | None = None

    @property
    def completed(self) -> bool:
        return self.error is None and self.first_token_s is not None and self.finish_s is not None

    @property
    def ttft_s(self) -> float | None:
        if not self.completed or self.first_token_s is None:
            return None
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> float | None:
        if not self.completed or self.finish_s is None:
            return None
        return self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        if not self.completed or self.output_tokens < 2:
            return None
        assert self.finish_s is not None and self.first_token_s is not None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)

    @property
    def itls_s(self) -> list[float]:
        ts = self.token_times_s
        return [b - a for a, b in itertools.pairwise(ts)] if self.completed else []

    def meets_ttft(self) -> bool:
        ttft = self.ttft_s
        return ttft is not None and (self.slo_ttft_s is None or ttft <= self.slo_ttft_s)

    def meets_tpot(self) -> bool:
        if not self.completed:
            return False
        tpot = self.tpot_s
        return self.slo_tpot_s is None or tpot is None or tpot <= self.slo_tpot_s

    def meets_slo(self) -> bool:
        return self.meets_ttft() and self.meets_tpot()


def latency_stats(values: Sequence[float]) -> dict[str, float | None]:
    """mean, p50, p90, p99 of ``values`` (all None when empty)."""
    if not values:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    arr = np.asarray(values, dtype=float)
    out: dict[str, float | None] = {"mean": float(arr.mean())}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(arr, p))
    return out


def _attainment(records: Sequence[RequestRecord], which: str) -> float | None:
    """Share meeting one SLO among requests that set it (None when none set it)."""
    attr, check = ("slo_ttft_s", "meets_ttft") if which == "ttft" else ("slo_tpot_s", "meets_tpot")
    subset = [r for r in records if getattr(r, attr) is not None]
    if not subset:
        return None
    return sum(getattr(r, check)() for r in subset) / len(subset)


def _summarize_group(records: Sequence[RequestRecord], duration_s: float) -> dict[str, Any]:
    done = [r for r in records if r.completed]
    met = sum(r.meets_slo() for r in records)
    out_tokens = sum(r.output_tokens for r in done)
    n = len(records)
    return {
        "requests": n,
        "completed": len(done),
        "failed": n - len(done),
        "slo_met": met,
        "slo_attainment": met / n if n else None,
        "ttft_slo_attainment": _attainment(records, "ttft"),
        "tpot_slo_attainment": _attainment(records, "tpot"),
        "goodput_rps": met / duration_s,
        "throughput_rps": len(done) / duration_s,
        "tokens_per_s": out_tokens / duration_s,
        "output_tokens": out_tokens,
        "ttft_s": latency_stats([r.ttft_s for r in done if r.ttft_s is not None]),
        "tpot_s": latency_stats([r.tpot_s for r in done if r.tpot_s is not None]),
        "itl_s": latency_stats([g for r in done for g in r.itls_s]),
        "e2e_s": latency_stats([r.e2e_s for r in done if r.e2e_s is not None]),
    }


def summarize(records: Iterable[RequestRecord], duration_s: float) -> dict[str, Any]:
    """Overall summary plus ``"models": {name: summary}``; JSON-serialisable.

    ``duration_s`` is the measurement window (e.g. from first arrival to last finish) and must
    be > 0. Keys per group: requests, completed, failed, slo_met, slo_attainment,
    ttft_slo_attainment, tpot_slo_attainment, goodput_rps, throughput_rps, tokens_per_s,
    output_tokens, and ttft_s / tpot_s / itl_s / e2e_s each with mean, p50, p90, p99.
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    recs = list(records)
    out = _summarize_group(recs, duration_s)
    out["duration_s"] = duration_s
    names = sorted({r.model for r in recs})
    out["models"] = {
        m: _summarize_group([r for r in recs if r.model == m], duration_s) for m in names
    }
    return out


def measurement_window(records: Iterable[RequestRecord]) -> float:
    """First arrival to the last finish (or last arrival when nothing finished); >= 1e-9."""
    recs = list(records)
    if not recs:
        return 1e-9
    start = min(r.arrival_s for r in recs)
    end = max([r.finish_s for r in recs if r.finish_s is not None] + [r.arrival_s for r in recs])
    return max(end - start, 1e-9)
