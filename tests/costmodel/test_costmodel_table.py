"""Table cost model: committed coefficients, monotonicity, recovery of known coefficients,
and (when the data folder exists) reproduction of the H100 profile rows.

Stated tolerances (solo rows of h100-cost.csv, committed fit):
- decode TPOT: every row within 10% (measured max 8.4%);
- batch prefill: every instance's mean error within 20% (measured 5-17%); every row within a
  factor 1.8 except at most one, and that one within a factor 3.5. The exception is a
  measurement outlier: llama-3.1-8b AWQ TP4, batch 1, input 512 took 49 ms while batch 2 of
  the same input took 15 ms; the fit predicts 15 ms.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fineserve.costmodel import BatchShape, InstanceKey, TableCostModel, make_cost_model
from fineserve.costmodel.profile import read_profile, write_profile
from fineserve.costmodel.table import DEFAULT_FIT_PATH, find_h100_csv
from fineserve.workload.data import resolve_data_dir

KEY = InstanceKey("llama-3.1-8b", "fp16", 1)


def _model() -> TableCostModel:
    return TableCostModel.from_json(DEFAULT_FIT_PATH)


def test_committed_fit_covers_paper_instances() -> None:
    m = _model()
    for key in [
        InstanceKey("llama-3.1-8b", q, 1) for q in ("fp16", "awq", "fp8", "qoq", "bf16")
    ] + [InstanceKey("qwen-3-32b", "fp16", 2), InstanceKey("llama-3.1-70b", "fp16", 4)]:
        assert m.supports(key), key
    assert not m.supports(InstanceKey("llama-3.1-8b", "fp16", 8))
    with pytest.raises(KeyError, match="no profile"):
        m.step_time(InstanceKey("nope", "fp16"), BatchShape(decode_context=(1,)))
    assert m.step_time(KEY, BatchShape()) == 0.0


def test_committed_fit_errors_within_stated_bounds() -> None:
    doc = json.loads(DEFAULT_FIT_PATH.read_text())
    assert "h100-cost.csv" in doc["source"]
    for e in doc["instances"]:
        assert e["decode_err_max"] <= 0.10, e
        assert e["prefill_err_mean"] <= 0.20, e
        assert e["prefill_err_max"] <= 0.80, e


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 64),
    st.integers(1, 8192),
    st.integers(1, 4096),
    st.sampled_from(["fp16", "awq", "fp8", "qoq"]),
)
def test_monotone_in_batch_tokens_context(b: int, tokens: int, ctx: int, q: str) -> None:
    m, key = _model(), InstanceKey("llama-3.1-8b", q, 1)
    assert m.decode_time(key, b + 1, ctx) >= m.decode_time(key, b, ctx) > 0
    assert m.decode_time(key, b, ctx + 100) >= m.decode_time(key, b, ctx)
    assert m.prefill_time(key, tokens + 64) >= m.prefill_time(key, tokens) > 0
    assert m.prefill_time(key, tokens, 512) >= m.prefill_time(key, tokens, 0)
    mixed = BatchShape(prefill=((tokens, 0),), decode_context=(ctx,) * b)
    assert m.step_time(key, mixed) >= max(m.prefill_time(key, tokens), m.decode_time(key, b, ctx))


def test_extrapolates_linearly_beyond_grid() -> None:
    m = _model()
    t64, t128, t256 = (m.decode_time(KEY, b, 640) for b in (64, 128, 256))
    assert t256 - t128 == pytest.approx(2 * (t128 - t64), rel=1e-9)


def _synthetic_rows(tmp_path: Path) -> Path:
    """A CPU-style profile generated from known coefficients, in the shared schema."""
    a, b, d, e, f = 0.002, 1e-5, 0.001, 2e-4, 1e-7
    rows = []
    for batch in (1, 2, 4, 8, 16):
        for inp in (64, 128):
            ctx = inp + (32 + 1) / 2
            rows.append(
                {
                    "model": "tiny-llama",
                    "qformat": "org",
                    "tp": 1,
                    "mps_percentage": 100,
                    "batch_size": batch,
                    "input_len": inp,
                    "output_len": 32,
                    "seq_len": inp + 32,
                    "prefill_time": a + b * batch * inp,
                    "ttft": a + b * batch * inp,
                    "tpot": d + e * batch + f * batch * ctx,
                }
            )
    path = tmp_path / "cpu-profile.csv"
    write_profile(path, rows)
    return path


def test_fit_recovers_known_coefficients(tmp_path: Path) -> None:
    path = _synthetic_rows(tmp_path)
    rows = read_profile(path)
    assert rows[0].key == InstanceKey("tiny-llama", "fp16", 1)
    m = make_cost_model(f"table:{path}")
    key = InstanceKey("tiny-llama", "fp16")
    assert m.supports(key)
    for r in rows:
        pre = BatchShape(prefill=((r.input_len, 0),) * r.batch_size)
        dec = BatchShape(decode_context=(round(r.mean_decode_context),) * r.batch_size)
        assert m.step_time(key, pre) == pytest.approx(r.prefill_time, rel=1e-3)
        assert m.step_time(key, dec) == pytest.approx(r.tpot, rel=1e-3)


DATA = resolve_data_dir(None)


@pytest.mark.skipif(DATA is None, reason="no ../shared/data folder")
def test_reproduces_h100_rows() -> None:
    assert DATA is not None
    m = _model()
    rows = [r for r in read_profile(find_h100_csv(DATA)) if r.mps_percentage >= 100]
    assert len(rows) == 216
    per_key: dict[InstanceKey, list[float]] = {}
    outliers = 0
    for r in rows:
        dec = BatchShape(decode_context=(round(r.mean_decode_context),) * r.batch_size)
        assert abs(m.step_time(r.key, dec) / r.tpot - 1) <= 0.10, r
        pre = m.step_time(r.key, BatchShape(prefill=((r.input_len, 0),) * r.batch_size))
        assert 1 / 3.5 <= pre / r.prefill_time <= 3.5, r
        outliers += not 1 / 1.8 <= pre / r.prefill_time <= 1.8
        per_key.setdefault(r.key, []).append(abs(pre / r.prefill_time - 1))
    assert outliers <= 1
    for key, errs in per_key.items():
        assert sum(errs) / len(errs) <= 0.20, key


@pytest.mark.skipif(DATA is None, reason="no ../shared/data folder")
def test_committed_json_is_what_the_fit_produces() -> None:
    assert DATA is not None
    fresh = TableCostModel.from_csv(find_h100_csv(DATA))
    committed = _model()
    assert set(fresh.keys()) == set(committed.keys())
    for k in committed.keys():  # noqa: SIM118
        for x, y in zip(fresh.coeffs(k).decode, committed.coeffs(k).decode, strict=True):
            assert x == pytest.approx(y, rel=1e-4, abs=1e-12)
