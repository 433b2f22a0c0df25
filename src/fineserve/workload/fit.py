"""Fit the synthetic-workload parameters from the real traces and write them as JSON.

Run ``python -m fineserve.workload.fit --data-dir ../shared/data``: it reads the Azure LLM
inference 2023 CSVs and the sarathi-serve ShareGPT length file and rewrites
``src/fineserve/workload/fitted_workloads.json`` (derived figures only, sources named inside).

Model fitted per Azure service:
- a *rate profile*: requests per minute relative to the mean (mean 1 over the minutes);
- a Gamma renewal process in "operational time" (time warped by the rate profile, so the slow
  drift of the rate is taken out); its gap CV is ``cv_operational``; ``cv_raw`` is the CV of
  the raw gaps that the synthetic trace should reproduce;
- lengths: the 0..100th percentiles of log prompt and log output tokens (a piecewise-linear
  quantile function) joined by a Gaussian copula with correlation ``rho`` of their normal
  scores; lognormal (mu, sigma) are stored too for reference.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fineserve.workload.data import resolve_data_dir
from fineserve.workload.traces import AZURE_SERVICES, load_azure, load_sharegpt_lengths

OUTPUT = Path(__file__).with_name("fitted_workloads.json")
BIN_S = 60.0
LEVELS = 101  # percentiles 0..100


def _normal_scores(x: np.ndarray) -> np.ndarray:
    """Rank-based normal scores (van der Waerden), ties broken by order."""
    ranks = np.argsort(np.argsort(x, kind="stable"), kind="stable") + 1.0
    u = ranks / (x.size + 1.0)
    return np.sqrt(2.0) * np.array([_erfinv(2.0 * v - 1.0) for v in u])


def _erfinv(y: float) -> float:
    """Inverse error function by Newton iterations on math.erf (|y| < 1)."""
    x = 0.0
    for _ in range(60):
        err = math.erf(x) - y
        x -= err / (2.0 / math.sqrt(math.pi) * math.exp(-x * x))
        if abs(err) < 1e-13:
            break
    return x


def fit_lengths(prompt: Sequence[int], output: Sequence[int]) -> dict[str, Any]:
    """Quantiles of log lengths, lognormal parameters, and copula correlation."""
    lp = np.log(np.asarray(prompt, dtype=float))
    lo = np.log(np.asarray(output, dtype=float))
    q = np.linspace(0.0, 100.0, LEVELS)
    rho = float(np.corrcoef(_normal_scores(lp), _normal_scores(lo))[0, 1])
    return {
        "n": int(lp.size),
        "log_prompt_quantiles": [round(float(v), 5) for v in np.percentile(lp, q)],
        "log_output_quantiles": [round(float(v), 5) for v in np.percentile(lo, q)],
        "copula_rho": round(rho, 5),
        "lognormal_prompt": [round(float(lp.mean()), 5), round(float(lp.std()), 5)],
        "lognormal_output": [round(float(lo.mean()), 5), round(float(lo.std()), 5)],
    }


def fit_arrivals(arrivals: Sequence[float]) -> dict[str, Any]:
    """Mean rate, per-minute relative rate profile, and gap CVs (raw and operational time)."""
    a = np.sort(np.asarray(arrivals, dtype=float))
    span = float(a[-1] - a[0])
    nbins = max(1, math.ceil(span / BIN_S))
    counts = np.bincount(np.minimum(((a - a[0]) // BIN_S).astype(int), nbins - 1), minlength=nbins)
    width = np.full(nbins, BIN_S)
    width[-1] = span - BIN_S * (nbins - 1) or BIN_S
    rel = (counts / width) / (a.size / span)
    rel = rel / (np.sum(rel * width) / span)  # time-weighted mean exactly 1
    warped = warp_times(a - a[0], [float(v) for v in rel], BIN_S)
    gaps_raw, gaps_op = np.diff(a), np.diff(warped)
    return {
        "rate_rps": round(a.size / span, 6),
        "span_s": round(span, 3),
        "cv_raw": round(float(gaps_raw.std() / gaps_raw.mean()), 5),
        "cv_operational": round(float(gaps_op.std() / gaps_op.mean()), 5),
        "bin_s": BIN_S,
        "rate_profile": [round(float(v), 5) for v in rel],
    }


def warp_times(times: np.ndarray, profile: Sequence[float], bin_s: float) -> np.ndarray:
    """Operational time: the integral of the relative rate profile up to each time."""
    prof = np.maximum(np.asarray(profile, dtype=float), 1e-9)
    edges = np.concatenate([[0.0], np.cumsum(prof * bin_s)])
    idx = np.minimum((times // bin_s).astype(int), prof.size - 1)
    return edges[idx] + (times - idx * bin_s) * prof[idx]


def fit_all(data_dir: Path) -> dict[str, Any]:
    """Fit every service and ShareGPT; the result is what ``fitted_workloads.json`` holds."""
    out: dict[str, Any] = {
        "source": {
            "azure": "Azure LLM inference trace 2023 (github.com/Azure/AzurePublicDataset, "
            "CC-BY 4.0, Patel et al. ISCA'24), AzureLLMInferenceTrace_{conv,code}.csv",
            "sharegpt": "sarathi-serve sharegpt_8k_filtered_stats_llama2_tokenizer.csv "
            "(github.com/microsoft/sarathi-serve, Apache-2.0)",
            "generated_by": "python -m fineserve.workload.fit --data-dir <data>",
        },
        "azure": {},
    }
    for service in AZURE_SERVICES:
        trace = load_azure(data_dir, service)
        fitted = fit_arrivals([r.arrival_s for r in trace])
        fitted.update(
            fit_lengths([r.prompt_tokens for r in trace], [r.output_tokens for r in trace])
        )
        out["azure"][service] = fitted
    pairs = load_sharegpt_lengths(data_dir)
    out["sharegpt"] = fit_lengths([p for p, _ in pairs], [o for _, o in pairs])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: fit from ``--data-dir`` and write ``--out`` (default: the committed JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=str(OUTPUT))
    args = ap.parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None:
        ap.error("no data folder found; pass --data-dir")
    fitted = fit_all(data_dir)
    Path(args.out).write_text(json.dumps(fitted, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
