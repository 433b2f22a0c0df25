"""Synthetic stand-ins for the real traces, for machines without the data folder.

Parameters come from ``fitted_workloads.json`` (written by ``python -m fineserve.workload.fit``
from the Azure 2023 trace and sarathi-serve's ShareGPT lengths; sources named in the file).

Arrivals: a Gamma renewal process with the trace's mean rate and operational-time gap CV, run in
operational time and mapped back through the trace's per-minute rate profile, so the result has
the trace's rate, its slow drift over the hour, and (approximately) its raw gap CV.
Lengths: the trace's empirical quantile function of log length (101 points, linear between them)
for prompt and output, coupled by a Gaussian copula with the fitted rank correlation.
Invariants: same arguments -> same output; lengths within the trace's observed [min, max].
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fineserve.workload.arrivals import gamma_arrivals
from fineserve.workload.fit import OUTPUT as FITTED_PATH
from fineserve.workload.traces import AZURE_SERVICES, TraceRequest


def load_fitted(path: Path = FITTED_PATH) -> dict[str, Any]:
    """The committed fitted parameters (a fresh dict on every call; nothing is cached)."""
    return json.loads(Path(path).read_text())


def _sample_lengths(params: dict[str, Any], n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) int array of (prompt, output) tokens from quantile functions and a copula."""
    rho = float(params["copula_rho"])
    cov = np.array([[1.0, rho], [rho, 1.0]])
    z = rng.multivariate_normal(np.zeros(2), cov, size=n) if n else np.zeros((0, 2))
    phi = np.vectorize(partial(_std_normal_cdf))
    u = phi(z) if n else z
    levels = np.linspace(0.0, 1.0, len(params["log_prompt_quantiles"]))
    out = np.empty((n, 2), dtype=np.int64)
    for col, key in enumerate(("log_prompt_quantiles", "log_output_quantiles")):
        q = np.asarray(params[key], dtype=float)
        vals = np.exp(np.interp(u[:, col], levels, q)) if n else np.zeros(0)
        lo, hi = math.exp(q[0]), math.exp(q[-1])
        out[:, col] = np.clip(np.rint(vals), max(1, round(lo)), max(1, round(hi)))
    return out


def _std_normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _unwarp(op_times: np.ndarray, profile: list[float], bin_s: float) -> np.ndarray:
    """Inverse of :func:`fineserve.workload.fit.warp_times` (profile repeats past its end)."""
    prof = np.maximum(np.asarray(profile, dtype=float), 1e-9)
    period = float(np.sum(prof * bin_s))
    cycles, rem = np.divmod(op_times, period)
    edges = np.concatenate([[0.0], np.cumsum(prof * bin_s)])
    idx = np.clip(np.searchsorted(edges, rem, side="right") - 1, 0, prof.size - 1)
    return cycles * prof.size * bin_s + idx * bin_s + (rem - edges[idx]) / prof[idx]


def synthetic_azure(
    service: str = "conv", seed: int = 0, duration_s: float = 3600.0
) -> list[TraceRequest]:
    """An Azure-2023-like trace of ``duration_s`` seconds (default one hour), sorted, from 0."""
    if service not in AZURE_SERVICES:
        raise ValueError(f"unknown Azure service {service!r}; expected one of {AZURE_SERVICES}")
    params = load_fitted()["azure"][service]
    profile, bin_s = list(params["rate_profile"]), float(params["bin_s"])
    op_end = float(_warp_scalar(duration_s, profile, bin_s))  # operational time matching duration_s
    op_times = gamma_arrivals(
        float(params["rate_rps"]), float(params["cv_operational"]), duration_s=op_end, seed=seed
    )
    times = _unwarp(np.asarray(op_times, dtype=float), profile, bin_s)
    times = times[times < duration_s]
    rng = np.random.default_rng(seed + 1_000_003)
    lengths = _sample_lengths(params, times.size, rng)
    return [
        TraceRequest(float(t), int(p), int(o)) for t, (p, o) in zip(times, lengths, strict=True)
    ]


def _warp_scalar(t: float, profile: list[float], bin_s: float) -> float:
    prof = np.maximum(np.asarray(profile, dtype=float), 1e-9)
    period_t = prof.size * bin_s
    cycles, rem = divmod(t, period_t)
    idx = min(int(rem // bin_s), prof.size - 1)
    return float(
        cycles * np.sum(prof * bin_s) + np.sum(prof[:idx] * bin_s) + (rem - idx * bin_s) * prof[idx]
    )


def synthetic_sharegpt_lengths(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` (prompt, output) pairs distributed like sarathi-serve's ShareGPT statistics."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    arr = _sample_lengths(load_fitted()["sharegpt"], n, rng)
    return [(int(p), int(o)) for p, o in arr]
