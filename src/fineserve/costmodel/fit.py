"""Fitting step-cost coefficients from profile rows (numpy least squares, no scipy).

Per instance (model, qformat, tp), from the rows with mps_percentage = 100:

- prefill(step) = a + b * tokens + c * attention_pairs + g * max(0, tokens - knee), where a
  batch of B prompts of L tokens has tokens = B*L and attention_pairs = B*L*(L+1)/2 (causal
  query-key pairs). The hinge at ``knee`` captures the roofline's turn from a weight-read
  (memory) bound at few tokens to the compute bound; ``knee`` is picked from a grid of
  candidates (powers of two 64..16384, and "none") by the smallest residual;
- decode(step)  = d + e * seqs + f * sum(context), with the row's mean context
  input_len + (output_len + 1)/2 per sequence.

Rows are weighted by 1/measured so the fit minimises *relative* error (times span 10 ms to
seconds). Coefficients are constrained to be >= 0 (so the model is monotone): among all subsets
of the features, the best non-negative unconstrained least-squares solution is kept (exact NNLS
for three features). Run ``python -m fineserve.costmodel.fit --data-dir ../shared/data`` to
rewrite ``src/fineserve/costmodel/data/h100_fit.json``.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fineserve.costmodel.base import InstanceKey, InterferenceModel
from fineserve.costmodel.profile import ProfileRow


@dataclass(frozen=True)
class StepCoeffs:
    """Fitted coefficients of one instance, with the fit's relative errors on its own rows."""

    prefill: tuple[float, float, float, float, float]  # a, b, c, g [s, s/token...], knee [tokens]
    decode: tuple[float, float, float]  # d [s], e [s/seq], f [s/(seq*ctx token)]
    n_rows: int = 0
    prefill_err_mean: float = 0.0
    prefill_err_max: float = 0.0
    decode_err_mean: float = 0.0
    decode_err_max: float = 0.0


def nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin_{coef >= 0} sum(((x @ coef - y) / y)^2) by trying every feature subset."""
    w = 1.0 / np.maximum(y, 1e-12)
    xw, yw = x * w[:, None], y * w
    best, best_res = np.zeros(x.shape[1]), float(np.sum(yw**2))
    for r in range(1, x.shape[1] + 1):
        for cols in itertools.combinations(range(x.shape[1]), r):
            sol, *_ = np.linalg.lstsq(xw[:, cols], yw, rcond=None)
            if (sol < 0).any():
                continue
            res = float(np.sum((xw[:, cols] @ sol - yw) ** 2))
            if res < best_res - 1e-15:
                best = np.zeros(x.shape[1])
                best[list(cols)] = sol
                best_res = res
    return best


KNEES = (0.0, *(2.0**k for k in range(6, 15)))  # 0.0 stands for "no hinge"


def prefill_features(batch: int, input_len: int, knee: float) -> list[float]:
    tokens = float(batch * input_len)
    hinge = max(0.0, tokens - knee) if knee > 0 else 0.0
    return [1.0, tokens, batch * input_len * (input_len + 1) / 2.0, hinge]


def fit_prefill(rows: Sequence[ProfileRow]) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Best (a, b, c, g) and knee over the candidate knees; also (mean, max) rel. error."""
    y = np.array([r.prefill_time for r in rows])
    best: tuple[float, np.ndarray, float] | None = None
    for knee in KNEES:
        x = np.array([prefill_features(r.batch_size, r.input_len, knee) for r in rows])
        coef = nnls_relative(x, y)
        res = float(np.sum(((x @ coef - y) / y) ** 2))
        if best is None or res < best[0] - 1e-12:
            best = (res, coef, knee)
    assert best is not None
    _, coef, knee = best
    x = np.array([prefill_features(r.batch_size, r.input_len, knee) for r in rows])
    return coef, knee, _rel_errors(x, y, coef)


def decode_features(batch: int, mean_ctx: float) -> list[float]:
    return [1.0, float(batch), batch * mean_ctx]


def _rel_errors(x: np.ndarray, y: np.ndarray, coef: np.ndarray) -> tuple[float, float]:
    err = np.abs(x @ coef - y) / y
    return float(err.mean()), float(err.max())


def fit_instance(rows: Sequence[ProfileRow]) -> StepCoeffs:
    """Fit one instance's solo rows (callers pass only mps_percentage == 100)."""
    pre = [r for r in rows if r.prefill_time > 0]
    dec = [r for r in rows if r.tpot > 0]
    pc, dc, knee = np.zeros(4), np.zeros(3), 0.0
    perr, derr = (0.0, 0.0), (0.0, 0.0)
    if pre:
        pc, knee, perr = fit_prefill(pre)
    if dec:
        xd = np.array([decode_features(r.batch_size, r.mean_decode_context) for r in dec])
        yd = np.array([r.tpot for r in dec])
        dc = nnls_relative(xd, yd)
        derr = _rel_errors(xd, yd, dc)
    return StepCoeffs(
        prefill=(float(pc[0]), float(pc[1]), float(pc[2]), float(pc[3]), knee),
        decode=(float(dc[0]), float(dc[1]), float(dc[2])),
        n_rows=len(rows),
        prefill_err_mean=perr[0],
        prefill_err_max=perr[1],
        decode_err_mean=derr[0],
        decode_err_max=derr[1],
    )


def fit_profile(rows: Sequence[ProfileRow]) -> dict[InstanceKey, StepCoeffs]:
    """Coefficients per instance from the solo (mps_percentage >= 100) rows."""
    groups: dict[InstanceKey, list[ProfileRow]] = {}
    for r in rows:
        if r.mps_percentage >= 100:
            groups.setdefault(r.key, []).append(r)
    return {k: fit_instance(v) for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}


def fit_interference(rows: Sequence[ProfileRow]) -> InterferenceModel:
    """Least-squares k for prefill and decode from MPS-share rows (see InterferenceModel)."""
    solo = {(r.key, r.batch_size, r.input_len): r for r in rows if r.mps_percentage >= 100}
    xs_p, ys_p, xs_d, ys_d = [], [], [], []
    for r in rows:
        base = solo.get((r.key, r.batch_size, r.input_len))
        if base is None or r.mps_percentage >= 100 or r.mps_percentage <= 0:
            continue
        x = 100.0 / r.mps_percentage - 1.0
        if base.prefill_time > 0 and r.prefill_time > 0:
            xs_p.append(x)
            ys_p.append(r.prefill_time / base.prefill_time - 1.0)
        if base.tpot > 0 and r.tpot > 0:
            xs_d.append(x)
            ys_d.append(r.tpot / base.tpot - 1.0)
    default = InterferenceModel()

    def slope(xs: list[float], ys: list[float], fallback: float) -> float:
        if not xs:
            return fallback
        xa, ya = np.asarray(xs), np.asarray(ys)
        return max(0.0, float(xa @ ya / (xa @ xa)))

    return InterferenceModel(
        prefill_k=slope(xs_p, ys_p, default.prefill_k), decode_k=slope(xs_d, ys_d, default.decode_k)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: fit the H100 profile (or ``--csv``) and write the coefficients JSON."""
    from fineserve.costmodel.table import DEFAULT_FIT_PATH, find_h100_csv, write_fit
    from fineserve.workload.data import resolve_data_dir

    ap = argparse.ArgumentParser(description="Fit cost-model coefficients from a profile CSV.")
    ap.add_argument("--data-dir", default=None, help="data folder holding fineserve-profiles/")
    ap.add_argument("--csv", default=None, help="profile CSV to fit instead of the H100 one")
    ap.add_argument("--out", default=str(DEFAULT_FIT_PATH))
    args = ap.parse_args(argv)
    if args.csv is not None:
        csv_path = Path(args.csv)
    else:
        data_dir = resolve_data_dir(args.data_dir)
        if data_dir is None:
            ap.error("no data folder found; pass --data-dir or --csv")
        csv_path = find_h100_csv(data_dir)
    summary = write_fit(csv_path, Path(args.out))
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
