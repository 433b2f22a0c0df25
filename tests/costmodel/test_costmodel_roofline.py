"""Roofline, interference and the registry.

Stated roofline bound (solo H100 rows, 432 points: batch prefill and mean TPOT): median error
factor <= 1.2, 90th percentile <= 1.6, worst <= 3.5 (committed calibration: 1.14 / 1.54 / 3.17).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fineserve.costmodel import (
    BatchShape,
    InstanceKey,
    InterferenceModel,
    ModelSpec,
    RooflineCostModel,
    colocated_slowdown,
    make_cost_model,
)
from fineserve.costmodel.profile import read_profile
from fineserve.costmodel.roofline import calibrate_roofline
from fineserve.costmodel.table import DEFAULT_FIT_PATH, find_h100_csv, load_fitted_interference
from fineserve.workload.data import resolve_data_dir

KEY = InstanceKey("llama-3.1-8b", "fp16", 1)


def _roofline() -> RooflineCostModel:
    return RooflineCostModel.from_json(DEFAULT_FIT_PATH)


def test_committed_roofline_fit_error() -> None:
    err = json.loads(DEFAULT_FIT_PATH.read_text())["roofline"]["fit_error"]
    assert err["points"] >= 400
    assert err["median_factor"] <= 1.2 and err["p90_factor"] <= 1.6 and err["max_factor"] <= 3.5


def test_roofline_shape() -> None:
    r = _roofline()
    assert r.step_time(KEY, BatchShape()) == 0.0
    # decode is weight-read bound: batch 1 -> 8 costs far less than 8x
    assert r.decode_time(KEY, 8, 512) < 2 * r.decode_time(KEY, 1, 512)
    # prefill of many tokens is compute bound and roughly linear
    assert r.prefill_time(KEY, 8192) > 3 * r.prefill_time(KEY, 2048)
    # FP8 doubles the GEMM peak: compute-bound prefill is faster than FP16. (Its decode is not:
    # the profile measures FP8 TPOT ~25% above FP16, and the calibration follows the data.)
    fp8 = InstanceKey("llama-3.1-8b", "fp8", 1)
    assert r.prefill_time(fp8, 8192) < r.prefill_time(KEY, 8192)
    # TP 4 splits the work of a big model
    big, big4 = InstanceKey("llama-3.1-70b", "fp16", 1), InstanceKey("llama-3.1-70b", "fp16", 4)
    assert r.prefill_time(big4, 4096) < r.prefill_time(big, 4096)
    for b in (1, 2, 16, 64):
        assert r.decode_time(KEY, b + 1, 700) >= r.decode_time(KEY, b, 700)
    with pytest.raises(KeyError):
        r.step_time(InstanceKey("unknown", "fp16"), BatchShape(decode_context=(1,)))


def test_roofline_accepts_local_model_dims() -> None:
    spec = ModelSpec.from_hf_config(
        {
            "num_hidden_layers": 2,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 128,
            "vocab_size": 1000,
        }
    )
    m = make_cost_model("roofline", models={"tiny-llama": spec})
    key = InstanceKey("tiny-llama", "fp16")
    assert m.supports(key) and m.step_time(key, BatchShape(decode_context=(10,))) > 0


def test_interference() -> None:
    fitted = load_fitted_interference()
    assert 0 < fitted.decode_k < fitted.prefill_k <= 1.0
    assert colocated_slowdown(1.0, 1) == 1.0
    s2, s3 = colocated_slowdown(1.0, 2), colocated_slowdown(1.0, 3)
    assert 1.0 < s2 < s3
    assert colocated_slowdown(0.0, 2) < s2  # decode suffers less than prefill
    im = InterferenceModel(prefill_k=1.0, decode_k=0.0)
    assert im.share_slowdown(0.5, 1.0) == pytest.approx(2.0)  # half the SMs: twice the time
    assert im.colocated_slowdown(0.0, 4) == 1.0
    with pytest.raises(ValueError):
        im.colocated_slowdown(0.5, 0)


def test_registry(tmp_path: Path) -> None:
    h = make_cost_model("h100")
    assert h.supports(KEY) and h.supports(InstanceKey("llama-3.1-8b", "fp16", 8))
    t = make_cost_model("h100-table")
    assert h.step_time(KEY, BatchShape(decode_context=(100,))) == t.step_time(
        KEY, BatchShape(decode_context=(100,))
    )
    assert make_cost_model(f"table:{DEFAULT_FIT_PATH}").supports(KEY)
    with pytest.raises(ValueError, match="unknown cost model"):
        make_cost_model("gpu-magic")
    with pytest.raises(ValueError, match="does not exist"):
        make_cost_model(f"table:{tmp_path / 'missing.csv'}")


DATA = resolve_data_dir(None)


@pytest.mark.skipif(DATA is None, reason="no ../shared/data folder")
def test_roofline_against_h100_rows() -> None:
    assert DATA is not None
    rows = read_profile(find_h100_csv(DATA))
    err = calibrate_roofline(rows)["fit_error"]
    committed = json.loads(DEFAULT_FIT_PATH.read_text())["roofline"]["fit_error"]
    assert err == committed
    r = _roofline()
    for row in rows:
        if row.mps_percentage < 100:
            continue
        pred = r.decode_time(row.key, row.batch_size, round(row.mean_decode_context))
        assert 1 / 3.5 <= pred / row.tpot <= 3.5, row
