from __future__ import annotations

from dataclasses import replace

import pytest

from fineserve.bench.memory import SCHEME_ORDER, BenchSettings, bisect_load, run_benchmark
from fineserve.bench.memory_scenarios import H100_MIXED
from fineserve.bench.memory_workload import TraceSource, ranked_rates
from fineserve.cli import main
from fineserve.workload.traces import TraceRequest


def test_bisection_finds_the_one_percent_point() -> None:
    found = bisect_load(lambda scale: scale / 10, steps=12)  # waits 1% at scale 0.1
    assert found == pytest.approx(0.1, abs=0.002)


def test_ranked_rates_follow_power_law_of_rank() -> None:
    rates = ranked_rates(6.0, [2, 0, 1], alpha=1.0)  # model 2 most popular
    assert rates[2] == pytest.approx(6.0 / (1 + 1 / 2 + 1 / 3))
    assert rates[2] > rates[0] > rates[1]
    assert sum(rates) == pytest.approx(6.0)


def test_scenario_arena_is_what_weights_leave() -> None:
    weights = sum(m.weight_bytes for m in H100_MIXED.models)
    assert H100_MIXED.arena_bytes == H100_MIXED.device_bytes - weights - H100_MIXED.reserve_bytes
    assert 8 * 2**30 < H100_MIXED.arena_bytes < 14 * 2**30


def test_benchmark_document_has_the_promised_shape() -> None:
    arrivals = tuple(TraceRequest(t * 0.5, 1, 1) for t in range(400))
    lengths = ((600, 100), (1500, 300), (3000, 50))
    source = TraceSource(arrivals, lengths, "test")
    weights = sum(m.weight_bytes for m in H100_MIXED.models)
    small_arena = weights + H100_MIXED.reserve_bytes + 4 * 2**30  # a 4 GiB arena fills quickly
    scenario = replace(H100_MIXED, device_bytes=small_arena, base_rate_rps=2.0)
    doc = run_benchmark(scenario, source, BenchSettings(duration_s=120, rankings=2, bisect_steps=3))
    assert set(doc["schemes"]) == set(SCHEME_ORDER) == set(doc["worst"])
    assert doc["schemes"]["slab"]["sustainable_load"] > 0
    for figures in doc["schemes"].values():
        assert figures["sustainable_load"] >= 0
        for key in ("utilization_under_pressure", "stranded_frac", "edge_frac", "tail_frac"):
            assert 0.0 <= figures[key] <= 1.0
    # the slab shares one pool; static partitions cannot lend idle memory
    assert (
        doc["schemes"]["slab"]["sustainable_load"] >= doc["schemes"]["static"]["sustainable_load"]
    )


def test_cli_names_an_unknown_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "memory", "--scenario", "nope"]) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err


def test_cli_names_a_missing_data_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "memory", "--data-dir", "/no/such/folder"]) == 2
    assert "/no/such/folder" in capsys.readouterr().err
