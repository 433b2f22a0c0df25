"""Fitting step-cost coefficients from profile rows (numpy least squares, no scipy).

Per instance (model, qformat, tp), from the rows with mps_percentage = 100:

- prefill(step) = a + b * tokens + c * attention_pairs + g * max(0, tokens - knee), where a
  batch of B prompts of L tokens has tokens = B*L and attention_pairs = B*L*(L+1)/2 (causal
  query-key pairs). The hinge at ``knee`` captures the roofline's turn from a weight-read
  (memory) bound at few tokens to the compute bound; ``knee`` is picked from a grid of
  candidates (powers of two 64..16384, and "none") by the smallest residual;
- decode(step)  = d + e * seqs + f * sum(context), with the row's mean context
  input_len + (output_len + 1)/2 per sequence; or, with ``piecewise_decode`` (CPU tables,
  whose decode step is not linear in the batch: one sequence costs clearly less than the line
  through larger batches), d + E(seqs) + f * sum(context) with E piecewise linear between the
  profiled batch sizes (E = 0 at the smallest, non-decreasing, extended past the largest with
  the last segment's slope): ``StepCoeffs.decode_knots``.

``padded_decode`` (CPU tables): the context term of a decode batch is f * seqs * max(context)
instead of f * sum(context): the CPU engine's batched decode attention gathers every sequence's
pages up to the longest context (profile rows, whose sequences share one context, cannot tell
the two apart, so this is a property of the engine, not fitted).

``padded_prefill`` (CPU tables; a page size in tokens, 0 = off): the attention term of a prefill
is c * the score entries the CPU engine's batched prefill computes instead of c * the causal
pairs: its prefill chunks are grouped (sorted by query length and key length, a group cut where
padding would more than double its work, ``PREFILL_PADDING_FACTOR``) and each group attends
with every chunk padded to the group's longest query and longest key length (the context after
the chunk, rounded up to whole pages), full query x key scores under an additive mask
(`execution/fast_attention.py`; `padded_prefill_work`). For the profile's rows (batch_size
equal prompts, one group) that is batch * L * ceil(L / page) * page, proportional to the pairs
up to the page rounding; for the uneven prompts of a real step it can be twice the pairs. Set,
not fitted, like ``padded_decode``.

``reweight`` (CPU tables): weights 1/fitted instead of 1/measured, iterated. Weighting by the
measured time favours rows measured low, which biases a fit to noisy rows low by about the
rows' relative variance (5-10% for CPU rows scattered by 20-30%); weights from the fit itself
do not.

Rows are weighted by 1/measured so the fit minimises *relative* error (times span 10 ms to
seconds). Coefficients are constrained to be >= 0 (so the model is monotone): among all subsets
of the features, the best non-negative unconstrained least-squares solution is kept (exact NNLS
for three features). Run ``python -m fineserve.costmodel.fit --data-dir ../shared/data`` to
rewrite ``src/fineserve/costmodel/data/h100_fit.json``.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Sequence
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
    # (batch size, seconds) knots of a piecewise-linear batch term E replacing e * seqs (e is
    # then 0); empty: the linear term (see `decode_batch_cost`)
    decode_knots: tuple[tuple[int, float], ...] = ()
    # True: the context term is f * seqs * max(context) (an engine that pads a decode batch to
    # its longest context, as the CPU engine's batched decode attention does), not f * sum
    decode_padded: bool = False
    # > 0: the prefill attention term is c * `padded_prefill_work` of the step's chunks with
    # pages of this many tokens (the CPU engine's padded batched prefill), not c * causal pairs
    prefill_page: int = 0
    prefill_err_mean: float = 0.0
    prefill_err_max: float = 0.0
    decode_err_mean: float = 0.0
    decode_err_max: float = 0.0


def nnls_relative(x: np.ndarray, y: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """argmin_{coef >= 0} sum(((x @ coef - y) / scale)^2) (`scale` defaults to y: relative
    error) by trying every feature subset."""
    w = 1.0 / np.maximum(y if scale is None else scale, 1e-12)
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


def nnls_reweighted(x: np.ndarray, y: np.ndarray, rounds: int = 5) -> np.ndarray:
    """`nnls_relative`, then refitted `rounds` times with each row's error relative to its
    fitted value (floored at half the measured one) instead of the measured value."""
    coef = nnls_relative(x, y)
    for _ in range(rounds):
        coef = nnls_relative(x, y, np.maximum(x @ coef, 0.5 * y))
    return coef


PREFILL_PADDING_FACTOR = 2.0  # `CpuFastBackend(max_padding_factor)`: a group's padded work cap


def padded_prefill_work(
    chunks: Sequence[tuple[int, int]], page: int, factor: float = PREFILL_PADDING_FACTOR
) -> int:
    """Query x key score entries the CPU engine's batched prefill computes for prefill
    `chunks` [(new tokens, context before)] with KV pages of `page` tokens: chunks sorted by
    (new tokens, key length = context after the chunk rounded up to whole pages) and grouped
    greedily, a group closed when adding the next chunk would make its padded work (members x
    longest query x longest key length) more than `factor` x its members' own work; each group
    computes members x longest query x longest key length (`execution.fast_attention.
    _group_prefills`). Invariant: >= sum(n * key length), non-decreasing in any chunk's n."""
    dims = sorted((n, -(-(n + c0) // page) * page) for n, c0 in chunks if n > 0)
    total = members = real = max_q = max_k = 0
    for q, k in dims:
        nq, nk, nreal = max(max_q, q), max(max_k, k), real + q * k
        if members and nq * nk * (members + 1) > factor * nreal:
            total += members * max_q * max_k
            members, nq, nk, nreal = 0, q, k, q * k
        members, real, max_q, max_k = members + 1, nreal, nq, nk
    return total + members * max_q * max_k


def decode_context_work(c: StepCoeffs, contexts: Sequence[int]) -> int:
    """The decode batch's context tokens the attention term counts: sum(contexts), or
    len * max(contexts) for a padded engine (`StepCoeffs.decode_padded`)."""
    if c.decode_padded:
        return len(contexts) * max(contexts) if contexts else 0
    return sum(contexts)


def decode_batch_cost(c: StepCoeffs, seqs: int) -> float:
    """The batch term of a decode step of `seqs` sequences: e * seqs, or with knots the
    piecewise-linear E(seqs) (0 up to the first knot, the last segment's slope past the last
    knot)."""
    knots = c.decode_knots
    if not knots:
        return c.decode[1] * seqs
    return _interpolate(knots, seqs)


def _interpolate(knots: tuple[tuple[int, float], ...], n: int) -> float:
    if n <= knots[0][0]:
        return knots[0][1]
    for (b0, v0), (b1, v1) in itertools.pairwise(knots):
        if n <= b1:
            return v0 + (v1 - v0) * (n - b0) / (b1 - b0)
    if len(knots) == 1:
        return knots[0][1]
    (b0, v0), (b1, v1) = knots[-2], knots[-1]
    return v1 + (v1 - v0) * (n - b1) / (b1 - b0)


KNEES = (0.0, *(2.0**k for k in range(6, 15)))  # 0.0 stands for "no hinge"


def prefill_features(batch: int, input_len: int, knee: float, page: int = 0) -> list[float]:
    """[1, tokens, attention, hinge] of `batch` prompts of `input_len` tokens; attention = the
    causal pairs, or with `page` > 0 the padded score entries (`padded_prefill_work`: one
    group, batch * L * L rounded up to pages)."""
    tokens = float(batch * input_len)
    hinge = max(0.0, tokens - knee) if knee > 0 else 0.0
    if page > 0:
        attention = float(batch * input_len * (-(-input_len // page) * page))
    else:
        attention = batch * input_len * (input_len + 1) / 2.0
    return [1.0, tokens, attention, hinge]


def fit_prefill(
    rows: Sequence[ProfileRow],
    solve: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    page: int = 0,
) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Best (a, b, c, g) and knee over the candidate knees; also (mean, max) rel. error.
    `solve` fits one knee's features (default `nnls_relative`); `page`: see
    `prefill_features`."""
    solve = solve or nnls_relative
    y = np.array([r.prefill_time for r in rows])
    best: tuple[float, np.ndarray, float] | None = None
    for knee in KNEES:
        x = np.array([prefill_features(r.batch_size, r.input_len, knee, page) for r in rows])
        coef = solve(x, y)
        res = float(np.sum(((x @ coef - y) / y) ** 2))
        if best is None or res < best[0] - 1e-12:
            best = (res, coef, knee)
    assert best is not None
    _, coef, knee = best
    x = np.array([prefill_features(r.batch_size, r.input_len, knee, page) for r in rows])
    return coef, knee, _rel_errors(x, y, coef)


def decode_features(batch: int, mean_ctx: float) -> list[float]:
    return [1.0, float(batch), batch * mean_ctx]


def _rel_errors(x: np.ndarray, y: np.ndarray, coef: np.ndarray) -> tuple[float, float]:
    err = np.abs(x @ coef - y) / y
    return float(err.mean()), float(err.max())


def piecewise_decode_features(batch: int, mean_ctx: float, knots: Sequence[int]) -> list[float]:
    """[1, g_1 .. g_K, batch * mean_ctx]: g_k rises 0 -> 1 between knots k-1 and k (the last
    one keeps rising past the last knot), so E(n) = sum(delta_k * g_k(n)) with every delta_k
    >= 0 is piecewise linear, non-decreasing, 0 at the first knot."""
    g = []
    for k in range(1, len(knots)):
        t = (batch - knots[k - 1]) / (knots[k] - knots[k - 1])
        g.append(max(0.0, t if k == len(knots) - 1 else min(1.0, t)))
    return [1.0, *g, batch * mean_ctx]


def fit_instance(
    rows: Sequence[ProfileRow],
    piecewise_decode: bool = False,
    reweight: bool = False,
    padded_decode: bool = False,
    padded_prefill: int = 0,
) -> StepCoeffs:
    """Fit one instance's solo rows (callers pass only mps_percentage == 100); options: see
    the module docstring."""
    pre = [r for r in rows if r.prefill_time > 0]
    dec = [r for r in rows if r.tpot > 0]
    pc, dc, knee = np.zeros(4), np.zeros(3), 0.0
    perr, derr = (0.0, 0.0), (0.0, 0.0)
    knots: tuple[tuple[int, float], ...] = ()
    solve = nnls_reweighted if reweight else nnls_relative
    if pre:
        pc, knee, perr = fit_prefill(pre, solve, padded_prefill)
    if dec:
        yd = np.array([r.tpot for r in dec])
        batches = sorted({r.batch_size for r in dec})
        if piecewise_decode and len(batches) >= 2:
            xd = np.array(
                [piecewise_decode_features(r.batch_size, r.mean_decode_context, batches)
                 for r in dec]
            )  # fmt: skip
            coef = solve(xd, yd)
            rises = np.concatenate([[0.0], np.cumsum(coef[1:-1])])
            knots = tuple((b, float(v)) for b, v in zip(batches, rises, strict=True))
            dc = np.array([coef[0], 0.0, coef[-1]])
        else:
            xd = np.array([decode_features(r.batch_size, r.mean_decode_context) for r in dec])
            coef = dc = solve(xd, yd)
        derr = _rel_errors(xd, yd, coef)
    return StepCoeffs(
        prefill=(float(pc[0]), float(pc[1]), float(pc[2]), float(pc[3]), knee),
        decode=(float(dc[0]), float(dc[1]), float(dc[2])),
        decode_knots=knots,
        decode_padded=padded_decode,
        prefill_page=padded_prefill,
        n_rows=len(rows),
        prefill_err_mean=perr[0],
        prefill_err_max=perr[1],
        decode_err_mean=derr[0],
        decode_err_max=derr[1],
    )


def fit_profile(
    rows: Sequence[ProfileRow],
    piecewise_decode: bool = False,
    reweight: bool = False,
    padded_decode: bool = False,
    padded_prefill: int = 0,
) -> dict[InstanceKey, StepCoeffs]:
    """Coefficients per instance from the solo (mps_percentage >= 100) rows (options: see
    the module docstring; the committed H100 fit uses none)."""
    groups: dict[InstanceKey, list[ProfileRow]] = {}
    for r in rows:
        if r.mps_percentage >= 100:
            groups.setdefault(r.key, []).append(r)
    return {
        k: fit_instance(v, piecewise_decode, reweight, padded_decode, padded_prefill)
        for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))
    }


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
