"""Trace readers on small files written here; real-data checks skip when the folder is absent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fineserve.workload.arrivals import interarrival_cv
from fineserve.workload.data import resolve_data_dir
from fineserve.workload.synthetic import load_fitted, synthetic_azure, synthetic_sharegpt_lengths
from fineserve.workload.traces import (
    TraceRequest,
    load_azure,
    load_mooncake,
    load_sharegpt_lengths,
    parse_azure_timestamp,
)


def test_resolve_data_dir(tmp_path: Path) -> None:
    assert resolve_data_dir(tmp_path) == tmp_path.resolve()
    with pytest.raises(ValueError, match="nope"):
        resolve_data_dir(tmp_path / "nope")
    d = resolve_data_dir(None)
    assert d is None or d.is_dir()


def test_load_azure_small(tmp_path: Path) -> None:
    folder = tmp_path / "azure-llm-inference-2023"
    folder.mkdir()
    (folder / "AzureLLMInferenceTrace_conv.csv").write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:47.5000000,10,0\n"
        "2023-11-16 18:15:46.2500000,374,44\n"
        "2023-11-16 18:16:46.2500001,5,6\n"
    )
    reqs = load_azure(tmp_path, "conv")
    assert reqs[0] == TraceRequest(0.0, 374, 44)
    assert reqs[1].arrival_s == pytest.approx(1.25)
    assert reqs[1].output_tokens == 1  # clamped
    assert reqs[2].arrival_s == pytest.approx(60.0000001, abs=1e-6)
    with pytest.raises(ValueError):
        load_azure(tmp_path, "chat")
    with pytest.raises(FileNotFoundError):
        load_azure(tmp_path, "code")


def test_parse_timestamp_fraction() -> None:
    a = parse_azure_timestamp("2023-11-16 18:15:46.6805900")
    b = parse_azure_timestamp("2023-11-16 18:15:46")
    assert a - b == pytest.approx(0.68059)


def test_load_sharegpt_small(tmp_path: Path) -> None:
    (tmp_path / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv").write_text(
        "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n74,918,992,0.08\n5,2,7,2.5\n"
    )
    assert load_sharegpt_lengths(tmp_path) == [(74, 918), (5, 2)]


def test_load_mooncake_small(tmp_path: Path) -> None:
    folder = tmp_path / "mooncake-fast25-traces"
    folder.mkdir()
    lines = [
        {"timestamp": 1500, "input_length": 20, "output_length": 3, "hash_ids": [0]},
        {"timestamp": 500, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1]},
    ]
    (folder / "conversation_trace.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert load_mooncake(tmp_path) == [TraceRequest(0.0, 6758, 500), TraceRequest(1.0, 20, 3)]


# -- synthetic counterparts: always run -------------------------------------------------------


@pytest.mark.parametrize("service", ["conv", "code"])
def test_synthetic_azure_matches_fitted_stats(service: str) -> None:
    p = load_fitted()["azure"][service]
    trace = synthetic_azure(service, seed=0)
    assert trace == synthetic_azure(service, seed=0)
    ts = [r.arrival_s for r in trace]
    assert ts == sorted(ts) and ts[0] >= 0 and ts[-1] < 3600.0
    assert abs(len(ts) / 3600.0 - p["rate_rps"]) / p["rate_rps"] < 0.2
    assert abs(interarrival_cv(ts) - p["cv_raw"]) / p["cv_raw"] < 0.25
    med_prompt = float(np.exp(p["log_prompt_quantiles"][50]))
    med_out = float(np.exp(p["log_output_quantiles"][50]))
    assert abs(np.median([r.prompt_tokens for r in trace]) - med_prompt) / med_prompt < 0.1
    assert abs(np.median([r.output_tokens for r in trace]) - med_out) / med_out < 0.1


def test_synthetic_sharegpt() -> None:
    pairs = synthetic_sharegpt_lengths(5000, seed=1)
    assert len(pairs) == 5000 and pairs == synthetic_sharegpt_lengths(5000, seed=1)
    arr = np.array(pairs)
    assert arr.min() >= 1 and arr[:, 0].max() <= 8141 and arr[:, 1].max() <= 1024
    # published stats of the real file: prompt mean 2340 / median 1730, output mean 439 / 415
    assert abs(arr[:, 0].mean() - 2340) / 2340 < 0.08
    assert abs(np.median(arr[:, 1]) - 415) / 415 < 0.08
    assert synthetic_sharegpt_lengths(0) == []


# -- real data: skip only when absent ----------------------------------------------------------

DATA = resolve_data_dir(None)
needs_data = pytest.mark.skipif(DATA is None, reason="no ../shared/data folder")


@needs_data
def test_real_azure_against_synthetic() -> None:
    assert DATA is not None
    real = load_azure(DATA, "conv")
    syn = synthetic_azure("conv", seed=0)
    assert len(real) == 19_366 and real[0].arrival_s == 0.0
    for attr in ("prompt_tokens", "output_tokens"):
        r = np.median([getattr(x, attr) for x in real])
        s = np.median([getattr(x, attr) for x in syn])
        assert abs(r - s) / r < 0.1
    cv_r = interarrival_cv([x.arrival_s for x in real])
    assert abs(interarrival_cv([x.arrival_s for x in syn]) - cv_r) / cv_r < 0.2


@needs_data
def test_real_sharegpt_and_mooncake() -> None:
    assert DATA is not None
    pairs = load_sharegpt_lengths(DATA)
    assert len(pairs) == 30_731
    moon = load_mooncake(DATA, "conversation")
    assert len(moon) == 12_031 and moon[-1].arrival_s == pytest.approx(3536.999)
