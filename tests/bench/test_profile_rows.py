"""`bench.profile` helpers that need no engine: the process clock, pooling, drift, the
checkpoint's qformat label."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fineserve.bench.profile import (
    ProcessClock,
    drift,
    make_clock,
    pool_rows,
    qformat_of,
    row_from_runs,
)
from fineserve.engine.clock import WallClock


def test_process_clock_jumps_idle_gaps_and_never_goes_back() -> None:
    clock = ProcessClock()
    t0 = clock.now()
    clock.sleep_until(t0 + 1000.0)  # returns at once: the gap is skipped, not waited
    t1 = clock.now()
    assert t1 >= t0 + 1000.0
    clock.sleep_until(t0)  # in the past: nothing happens
    sum(i * i for i in range(20000))  # some CPU work moves it forward
    assert clock.now() >= t1


def test_make_clock_kinds() -> None:
    assert isinstance(make_clock("wall"), WallClock)
    assert isinstance(make_clock("cpu"), ProcessClock)
    with pytest.raises(ValueError, match="unknown clock"):
        make_clock("gpu")


def _table(scale: float) -> list[dict]:
    return [
        row_from_runs("m", "fp32", b, n, 8, [(scale * b * n, scale * b, scale * 2 * b)])
        for b in (1, 4)
        for n in (16, 64)
    ]


def test_pool_rows_takes_medians_over_every_run() -> None:
    pooled = pool_rows(_table(1.0), _table(2.0), _table(10.0))
    assert [(r["batch_size"], r["input_len"]) for r in pooled] == [
        (1, 16),
        (1, 64),
        (4, 16),
        (4, 64),
    ]
    first = pooled[0]
    assert first["prefill_runs"] == [16.0, 32.0, 160.0]
    assert first["prefill_time"] == 32.0  # the median, not the mean
    assert first["tpot"] == 2.0
    assert first["mixed_time"] == 4.0
    assert first["decode_time"] == pytest.approx(7 * 2.0)


def test_pool_rows_rejects_a_missing_point() -> None:
    with pytest.raises(ValueError, match="not in every table"):
        pool_rows(_table(1.0), _table(1.0)[:2])


def test_drift_is_after_over_before() -> None:
    assert drift(_table(1.0), _table(1.5)) == pytest.approx({"prefill": 1.5, "tpot": 1.5})
    assert drift(_table(1.0), []) == {"prefill": 1.0, "tpot": 1.0}


def test_row_from_runs_median_or_mean() -> None:
    runs = [(1.0, 0.1, 2.0), (2.0, 0.2, 3.0), (6.0, 0.9, 7.0)]
    median = row_from_runs("m", "fp32", 1, 16, 8, runs)
    mean = row_from_runs("m", "fp32", 1, 16, 8, runs, mean=True)
    assert (median["prefill_time"], median["tpot"], median["mixed_time"]) == (2.0, 0.2, 3.0)
    assert mean["prefill_time"] == pytest.approx(3.0)
    assert mean["tpot"] == pytest.approx(0.4)
    assert mean["mixed_time"] == pytest.approx(4.0)
    assert mean["prefill_runs"] == [1.0, 2.0, 6.0]


@pytest.mark.parametrize(
    ("fixture", "qformat"),
    [
        ("ct-fp8-dynamic", "fp8"),
        ("ct-fp8-kv", "fp8"),
        ("ct-w8a8-int8", "w8a8"),
        ("ct-w4a16", "gptq"),
        ("awq-gemm", "awq"),
    ],
)
def test_qformat_of_real_tool_checkpoints(fixture: str, qformat: str) -> None:
    """The profile labels a checkpoint with the cost model's name for its scheme, read as the
    loader reads it (llmcompressor writes quant_method "compressed-tensors" for all of them)."""
    folder = Path(__file__).parents[1] / "fixtures" / "checkpoints" / fixture
    assert qformat_of(folder) == qformat


def test_qformat_of_dense_and_unknown(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    assert qformat_of(tmp_path) == "bf16"
    cfg = {"dtype": "float16", "quantization_config": {"quant_method": "bitsandbytes"}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert qformat_of(tmp_path) == "bitsandbytes"


def test_point_steps_in_order_interleaves_the_decode_before_each_mixed_step() -> None:
    from fineserve.bench.profile import PointSteps

    steps = PointSteps(0.02, (0.004, 0.005), (0.03, 0.031), (0.0,) * 6, between=(0.006, 0.007))
    assert steps.in_order == (0.02, 0.004, 0.005, 0.006, 0.03, 0.007, 0.031)
    # the row's figures leave the decode steps between the mixed ones out
    assert steps.summary == pytest.approx((0.02, 0.0045, 0.0305))
    # probes without them (older runs): mixed steps back to back
    assert PointSteps(0.02, (0.004,), (0.03, 0.031), (0.0,) * 4).in_order == (
        0.02, 0.004, 0.03, 0.031,
    )  # fmt: skip
