"""The table's extra fixed cost of mixed (prefill + decode) steps, fitted from `mixed_time`.

Invariants: without `mixed_time` rows (the H100 profile) the extra is 0 and the formula is the
fitted one alone; with them, a mixed step costs the fitted formula plus m0 + m1 * decodes fitted
to the measured mixed steps' residuals (both >= 0, so adding decodes to a prefill never makes a
step cheaper).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fineserve.costmodel import BatchShape, InstanceKey, TableCostModel
from fineserve.costmodel.profile import read_profile, write_profile
from fineserve.costmodel.table import DEFAULT_FIT_PATH

KEY = InstanceKey("cpu-llama", "fp32")


def _rows(mixed_extra: float | None) -> list[dict[str, float | int | str]]:
    """Exact rows of prefill = 2 ms + 0.1 ms/token, decode = 1 ms + 0.2 ms/seq, and mixed
    steps costing `mixed_extra` more than the formula (no mixed_time column if None)."""
    rows: list[dict[str, float | int | str]] = []
    for b in (1, 2, 4, 8):
        for n in (16, 64, 256):
            pre = 0.002 + 1e-4 * b * n
            tpot = 0.001 + 2e-4 * b
            row: dict[str, float | int | str] = {
                "model": KEY.model, "qformat": "fp32", "tp": 1, "mps_percentage": 100,
                "batch_size": b, "input_len": n, "output_len": 8, "seq_len": n + 8,
                "prefill_time": pre, "decode_time": 7 * tpot, "ttft": pre, "tpot": tpot,
                "e2e": pre + 7 * tpot,
            }  # fmt: skip
            if mixed_extra is not None:
                formula = max(0.002, 0.001) + 1e-4 * n + 2e-4 * b
                row["mixed_time"] = formula + mixed_extra
            rows.append(row)
    return rows


def _table(tmp_path: Path, mixed_extra: float | None) -> TableCostModel:
    path = tmp_path / "p.csv"
    write_profile(path, _rows(mixed_extra))
    return TableCostModel.from_csv(path)


MIXED = BatchShape(prefill=((64, 0),), decode_context=(100, 100))


def test_mixed_time_column_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    write_profile(path, _rows(0.003))
    assert all(r.mixed_time > 0 for r in read_profile(path))
    write_profile(path, _rows(None))
    assert all(r.mixed_time == 0.0 for r in read_profile(path))


def test_extra_is_the_measured_residual(tmp_path: Path) -> None:
    with_extra, plain = _table(tmp_path, 0.003), _table(tmp_path, None)
    assert with_extra.mixed_extra(KEY) == pytest.approx(0.003, abs=2e-4)
    assert plain.mixed_extra(KEY) == 0.0
    diff = with_extra.step_time(KEY, MIXED) - plain.step_time(KEY, MIXED)
    assert diff == pytest.approx(0.003, abs=2e-4)


def test_extra_applies_to_mixed_steps_only(tmp_path: Path) -> None:
    with_extra, plain = _table(tmp_path, 0.003), _table(tmp_path, None)
    for shape in (BatchShape(prefill=((64, 0),)), BatchShape(decode_context=(100, 100))):
        assert with_extra.step_time(KEY, shape) == pytest.approx(plain.step_time(KEY, shape))


def test_negative_residual_is_clipped_so_costs_stay_monotone(tmp_path: Path) -> None:
    model = _table(tmp_path, -0.0015)
    assert model.mixed_extra(KEY) == 0.0
    prefill_only = model.step_time(KEY, BatchShape(prefill=((64, 0),)))
    assert model.step_time(KEY, MIXED) >= prefill_only


def test_committed_h100_fit_has_no_extra() -> None:
    model = TableCostModel.from_json(DEFAULT_FIT_PATH)
    key = InstanceKey("llama-3.1-8b", "fp16", 1)
    assert model.mixed_extra(key) == 0.0
    c = model.coeffs(key)
    a, b, cp, g, knee = c.prefill
    d, e, f = c.decode
    tokens, pairs = 64, MIXED.attention_pairs
    expected = max(a, d) + b * tokens + cp * pairs + g * max(0.0, tokens - knee) * (knee > 0)
    expected += e * 2 + f * 200
    assert model.step_time(key, MIXED) == pytest.approx(expected)


def _rows_growing(m0: float, m1: float) -> list[dict[str, float | int | str]]:
    """`_rows(0)` with mixed steps costing m0 + m1 * batch_size more than the formula."""
    rows = _rows(0.0)
    for row in rows:
        row["mixed_time"] = float(row["mixed_time"]) + m0 + m1 * int(row["batch_size"])
    return rows


def test_extra_growing_with_the_decodes_is_recovered(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    write_profile(path, _rows_growing(0.002, 0.0005))
    model = TableCostModel.from_csv(path)
    m0, m1 = model.mixed_terms(KEY)
    assert (m0, m1) == pytest.approx((0.002, 0.0005), rel=1e-3)
    plain = _table(tmp_path, None)
    for n in (1, 2, 7):
        shape = BatchShape(prefill=((64, 0),), decode_context=(100,) * n)
        diff = model.step_time(KEY, shape) - plain.step_time(KEY, shape)
        assert diff == pytest.approx(0.002 + 0.0005 * n, rel=1e-3)


def test_constant_extra_has_no_decode_term(tmp_path: Path) -> None:
    model = _table(tmp_path, 0.003)
    m0, m1 = model.mixed_terms(KEY)
    assert m0 == pytest.approx(0.003, rel=1e-3)
    assert m1 == pytest.approx(0.0, abs=1e-7)


def test_one_slow_row_does_not_move_the_extra(tmp_path: Path) -> None:
    rows = _rows_growing(0.002, 0.0005)
    rows[4]["mixed_time"] = float(rows[4]["mixed_time"]) + 0.05  # caught in a slow spell
    path = tmp_path / "p.csv"
    write_profile(path, rows)
    m0, m1 = TableCostModel.from_csv(path).mixed_terms(KEY)
    assert (m0, m1) == pytest.approx((0.002, 0.0005), rel=1e-3)
