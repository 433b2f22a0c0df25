"""CPU-table fit options: decode piecewise in the batch size, weights from the fit."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from fineserve.costmodel.base import BatchShape, InstanceKey
from fineserve.costmodel.fit import (
    StepCoeffs,
    decode_batch_cost,
    fit_instance,
    nnls_relative,
    nnls_reweighted,
)
from fineserve.costmodel.profile import ProfileRow
from fineserve.costmodel.table import (
    DEFAULT_FIT_PATH,
    TableCostModel,
    _coeffs_from_json,
    _coeffs_to_json,
)

KEY = InstanceKey("cpu-model", "fp32")
BATCH_TERM = {1: 0.0, 2: 1.0e-3, 4: 1.3e-3, 8: 1.8e-3, 16: 3.0e-3}  # concave, as on the CPU


def _rows() -> list[ProfileRow]:
    """Decode rows from d + E(batch) + f * batch * ctx with E piecewise linear (not linear)."""
    rows = []
    for b, extra in BATCH_TERM.items():
        for n in (16, 64, 128, 256):
            probe = ProfileRow(KEY, 100.0, b, n, 8, 0.0, 0.0, 0.0)
            tpot = 0.004 + extra + 2e-6 * b * probe.mean_decode_context
            prefill = 0.005 + 1e-4 * b * n
            rows.append(ProfileRow(KEY, 100.0, b, n, 8, prefill, prefill, tpot))
    return rows


def assert_decode_step_times_are_step_times(
    table: TableCostModel, contexts: tuple[int, ...], k: int
) -> None:
    """The table's closed-form `decode_step_times` gives the same floats as `step_time` on each
    iteration's shifted batch."""
    plain = [
        table.step_time(KEY, BatchShape(decode_context=tuple(c + j for c in contexts)))
        for j in range(k)
    ]
    assert table.decode_step_times(KEY, contexts, k) == plain


def test_piecewise_decode_reproduces_a_profile_the_linear_fit_cannot() -> None:
    linear = fit_instance(_rows())
    piecewise = fit_instance(_rows(), piecewise_decode=True)
    assert not linear.decode_knots
    assert linear.decode_err_max > 0.05
    assert piecewise.decode_err_max < 1e-6
    assert [b for b, _ in piecewise.decode_knots] == [1, 2, 4, 8, 16]
    for b, extra in BATCH_TERM.items():
        assert decode_batch_cost(piecewise, b) == pytest.approx(extra, abs=1e-9)
    assert piecewise.decode[0] == pytest.approx(0.004)
    assert piecewise.decode[1] == 0.0
    assert piecewise.decode[2] == pytest.approx(2e-6)


def test_batch_term_interpolates_and_extends_with_the_last_slope() -> None:
    c = StepCoeffs((0.0,) * 5, (0.001, 0.0, 0.0), decode_knots=((1, 0.0), (4, 3.0), (8, 5.0)))
    assert decode_batch_cost(c, 1) == 0.0
    assert decode_batch_cost(c, 2) == pytest.approx(1.0)
    assert decode_batch_cost(c, 6) == pytest.approx(4.0)
    assert decode_batch_cost(c, 12) == pytest.approx(7.0)  # slope 0.5 past the last knot
    linear = StepCoeffs((0.0,) * 5, (0.001, 0.25, 0.0))
    assert decode_batch_cost(linear, 12) == 3.0


def test_piecewise_table_is_monotone_and_its_horizon_times_match_step_time() -> None:
    table = TableCostModel({KEY: fit_instance(_rows(), piecewise_decode=True)})
    times = [table.step_time(KEY, BatchShape(decode_context=(100,) * n)) for n in range(1, 40)]
    assert all(a <= b for a, b in itertools.pairwise(times))
    assert_decode_step_times_are_step_times(table, (90, 130, 17), 5)
    mixed = BatchShape(prefill=((32, 0),), decode_context=(50, 60))
    alone = table.step_time(KEY, BatchShape(prefill=((32, 0),)))
    assert table.step_time(KEY, mixed) > alone
    assert 0.0 < table.prefill_fraction(KEY, mixed) < 1.0


def test_knots_survive_the_json_round_trip() -> None:
    c = fit_instance(_rows(), piecewise_decode=True)
    back = _coeffs_from_json(json.loads(json.dumps(_coeffs_to_json(c))))
    assert [b for b, _ in back.decode_knots] == [b for b, _ in c.decode_knots]
    for (_, v), (_, w) in zip(back.decode_knots, c.decode_knots, strict=True):
        assert v == pytest.approx(w, rel=1e-5)
    assert "decode_knots" not in _coeffs_to_json(fit_instance(_rows()))


def test_committed_h100_table_is_linear() -> None:
    table = TableCostModel.from_json(DEFAULT_FIT_PATH)
    keys = table.keys()
    assert keys
    assert all(not table.coeffs(k).decode_knots for k in keys)


def test_reweighting_removes_the_low_bias_of_relative_weights() -> None:
    """Rows scattered +-30% around 1.0: weights 1/measured fit 0.835, weights from the fit
    the mean."""
    x = np.ones((20, 1))
    y = np.array([0.7, 1.3] * 10)
    assert nnls_relative(x, y)[0] == pytest.approx(0.835, abs=0.001)
    assert nnls_reweighted(x, y)[0] == pytest.approx(1.0, abs=1e-6)
    exact = np.array([[1.0, 2.0], [1.0, 5.0], [1.0, 9.0]])
    target = exact @ np.array([0.5, 0.25])
    assert nnls_reweighted(exact, target) == pytest.approx([0.5, 0.25])


def test_padded_decode_counts_every_sequence_at_the_longest_context() -> None:
    padded = TableCostModel({KEY: fit_instance(_rows(), piecewise_decode=True, padded_decode=True)})
    summed = TableCostModel({KEY: fit_instance(_rows(), piecewise_decode=True)})
    uneven, even = BatchShape(decode_context=(10, 100)), BatchShape(decode_context=(100, 100))
    assert padded.step_time(KEY, uneven) == padded.step_time(KEY, even)
    assert summed.step_time(KEY, uneven) < summed.step_time(KEY, even)
    assert padded.step_time(KEY, even) == summed.step_time(KEY, even)  # same fit, same rows
    assert_decode_step_times_are_step_times(padded, (10, 100, 37), 4)
    mixed = BatchShape(prefill=((32, 0),), decode_context=(10, 100))
    assert padded.step_time(KEY, mixed) > summed.step_time(KEY, mixed)
    c = padded.coeffs(KEY)
    assert _coeffs_from_json(json.loads(json.dumps(_coeffs_to_json(c)))).decode_padded
    linear_padded = TableCostModel({KEY: fit_instance(_rows(), padded_decode=True)})
    assert_decode_step_times_are_step_times(linear_padded, (10, 100, 37), 3)
