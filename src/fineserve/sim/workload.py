"""Simulator workloads: per-model Poisson streams with power-law rates and ShareGPT lengths,
and SLOs as a multiple of each model's solo TTFT.

Deterministic under `seed`. Lengths come from sarathi-serve's ShareGPT statistics in the data
folder when present, else from the committed fit of that distribution
(`workload.synthetic_sharegpt_lengths`); prompt + output is clipped to the model's context.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fineserve.costmodel.base import BatchShape, CostModel
from fineserve.sim.catalog import ModelType, SimModel
from fineserve.sim.loop import SimRequest
from fineserve.workload.arrivals import poisson_arrivals, power_law_shares
from fineserve.workload.synthetic import synthetic_sharegpt_lengths
from fineserve.workload.traces import load_sharegpt_lengths

MUXSERVE_ALPHA = 0.9  # MuxServe's default popularity exponent (it sweeps 0.7 .. 2.1)


def sharegpt_lengths(data_dir: Path | None, n: int = 20000, seed: int = 0) -> list[tuple[int, int]]:
    """(prompt, output) pairs: the real statistics when available, else the committed fit."""
    if data_dir is not None:
        try:
            return load_sharegpt_lengths(data_dir)
        except (FileNotFoundError, OSError, ValueError):
            pass
    return synthetic_sharegpt_lengths(n, seed=seed)


def assign_rates(
    catalog: Sequence[tuple[str, ModelType]], total_rate: float, alpha: float, seed: int
) -> list[SimModel]:
    """Models with power-law rates (MuxServe: share of rank i ~ (i+1)^-alpha); ranks are a
    seeded permutation of the catalogue, so popularity is independent of size."""
    shares = power_law_shares(len(catalog), alpha)
    order = np.random.default_rng(seed).permutation(len(catalog))
    return [
        SimModel(name, mtype, total_rate * shares[int(rank)])
        for (name, mtype), rank in zip(catalog, np.argsort(order), strict=True)
    ]


def solo_ttft(cost: CostModel, mtype: ModelType, prompt_tokens: int, budget: int = 2048) -> float:
    """TTFT of one prompt alone on its GPUs: its chunked prefill steps back to back."""
    total, done = 0.0, 0
    while done < prompt_tokens:
        chunk = min(budget, prompt_tokens - done)
        total += cost.step_time(mtype.key, BatchShape(prefill=((chunk, done),)))
        done += chunk
    return total


def with_slos(
    models: Sequence[SimModel],
    cost: CostModel,
    slo_scale: float,
    ref_prompt_tokens: int,
    tpot_scale: float | None = None,
) -> list[SimModel]:
    """TTFT SLO = `slo_scale` x solo TTFT of a `ref_prompt_tokens` prompt; TPOT SLO (if
    `tpot_scale`) = that scale x the solo decode step at that context."""
    out = []
    for m in models:
        ttft = slo_scale * solo_ttft(cost, m.mtype, ref_prompt_tokens)
        tpot = None
        if tpot_scale is not None:
            step = cost.step_time(m.mtype.key, BatchShape(decode_context=(ref_prompt_tokens,)))
            tpot = tpot_scale * step
        out.append(m.with_slo(ttft, tpot))
    return out


def poisson_requests(
    models: Sequence[SimModel],
    lengths: Sequence[tuple[int, int]],
    duration_s: float,
    seed: int,
) -> list[SimRequest]:
    """Poisson arrivals per model at its `rate` over `duration_s`, lengths drawn uniformly
    with replacement from `lengths`; sorted by arrival, ids `"<model>-<k>"`."""
    rng = np.random.default_rng(seed + 7)
    reqs: list[SimRequest] = []
    for k, m in enumerate(models):
        if m.rate <= 0:
            continue
        times = poisson_arrivals(m.rate, duration_s=duration_s, seed=seed * 1009 + k)
        reqs.extend(_attach(m, times, lengths, rng))
    reqs.sort(key=lambda r: (r.arrival_s, r.request_id))
    return reqs


def _attach(
    m: SimModel,
    times: Sequence[float],
    lengths: Sequence[tuple[int, int]],
    rng: np.random.Generator,
) -> list[SimRequest]:
    idx = rng.integers(0, len(lengths), size=len(times))
    limit = m.mtype.max_model_len
    out = []
    for j, (t, li) in enumerate(zip(times, idx, strict=True)):
        p, o = lengths[int(li)]
        p = max(1, min(int(p), limit - 2))
        o = max(1, min(int(o), limit - 1 - p))
        out.append(SimRequest(f"{m.name}-{j}", m.name, float(t), p, o))
    return out


def mean_prompt(lengths: Sequence[tuple[int, int]]) -> int:
    return round(float(np.mean([p for p, _ in lengths]))) if lengths else 1
