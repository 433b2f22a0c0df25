"""The load client: spec parsing, deterministic plans with power-law popularity, stream
parsing, a run against a live (simulated) server, and `fineserve bench serve` end to end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fineserve.workload.client import ClientConfig, PlannedRequest, is_token_chunk, run_plan
from fineserve.workload.client_workload import build_plan, parse_spec, read_length_table
from fineserve.workload.metrics import measurement_window, summarize


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    from fineserve.server.app import create_app
    from fineserve.server.launch import LiveServer
    from fineserve.server.simulated import simulated_backend

    backend = simulated_backend(("a", "b", "c"), step_s=0.002, max_model_len=1024)
    with LiveServer(create_app(backend)) as live:
        yield live


def test_spec_strings_and_files(tmp_path: Path) -> None:
    spec = parse_spec("gamma:rate=3,cv=2.5,duration=10,models=x+y,alpha=1.2,slo_ttft=0.5")
    assert (spec.kind, spec.rate, spec.cv, spec.models, spec.slo_ttft) == (
        "gamma", 3.0, 2.5, ("x", "y"), 0.5)  # fmt: skip
    path = tmp_path / "w.yaml"
    path.write_text("kind: poisson\nrate: 2\nmodels: [a, b]\nn: 5\n")
    assert parse_spec(str(path)).models == ("a", "b")
    for bad in ("weird:rate=1", "poisson:rate", "poisson:bogus=1", "poisson:rate=x"):
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_plans_are_seeded_and_follow_power_law_popularity() -> None:
    spec = parse_spec("poisson:rate=50,duration=40,alpha=1.5,prompt=10,output=4,seed=3")
    plan = build_plan(spec, ["m0", "m1", "m2"])
    assert plan == build_plan(spec, ["m0", "m1", "m2"])
    counts = [sum(r.model == m for r in plan) for m in ("m0", "m1", "m2")]
    assert counts[0] > counts[1] > counts[2] > 0
    assert all(r.prompt_tokens == 10 and r.output_tokens == 4 for r in plan)
    assert [r.at_s for r in plan] == sorted(r.at_s for r in plan) and plan[-1].at_s < 40
    capped = build_plan(parse_spec("poisson:rate=50,n=7,lengths=synthetic,max_output=3"), ["a"])
    assert len(capped) == 7 and all(r.output_tokens <= 3 for r in capped)


def test_length_table_csv(tmp_path: Path) -> None:
    path = tmp_path / "lengths.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens\n10,2\n0,5\n")
    assert read_length_table(path) == [(10, 2), (1, 5)]
    plan = build_plan(parse_spec(f"poisson:rate=5,n=4,lengths={path}"), ["a"])
    assert {(r.prompt_tokens, r.output_tokens) for r in plan} <= {(10, 2), (1, 5)}


def test_trace_replay_is_time_scaled() -> None:
    from fineserve.workload.data import resolve_data_dir

    if resolve_data_dir(None) is None:
        pytest.skip("no data folder")
    slow = build_plan(parse_spec("azure:scale=1,duration=60"), ["a", "b"])
    fast = build_plan(parse_spec("azure:scale=4,duration=60"), ["a", "b"])
    assert len(fast) > len(slow) > 0
    moon = build_plan(parse_spec("mooncake:rate=2,n=10,max_prompt=64"), ["a"])
    assert len(moon) == 10 and max(r.prompt_tokens for r in moon) <= 64


def test_token_chunks_are_told_from_role_and_usage_chunks() -> None:
    assert is_token_chunk({"choices": [{"text": " hi", "finish_reason": None}]})
    assert is_token_chunk({"choices": [{"text": "", "finish_reason": None}]})
    assert not is_token_chunk({"choices": [{"text": "", "finish_reason": "stop"}]})
    assert not is_token_chunk({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    assert is_token_chunk({"choices": [{"delta": {"content": "x"}, "finish_reason": None}]})
    assert not is_token_chunk({"choices": [], "usage": {"completion_tokens": 3}})


def test_run_against_a_live_server_records_every_request(server: Any) -> None:
    plan = [PlannedRequest(0.01 * i, "abc"[i % 3], 8, 5, slo_ttft_s=5.0) for i in range(30)]
    plan.append(PlannedRequest(0.1, "nope", 8, 5))
    for endpoint in ("completions", "chat"):
        records, wall = asyncio.run(run_plan(plan, ClientConfig(server.url, endpoint=endpoint)))
        assert wall > 0.29 and len(records) == 31
        good = [r for r in records if r.model != "nope"]
        assert all(r.completed and r.output_tokens == 5 for r in good)
        assert all(len(r.token_times_s) == 5 and r.ttft_s is not None for r in good)
        assert records[-1].error is not None and "404" in records[-1].error
        summary = summarize(records, measurement_window(records))
        assert summary["requests"] == 31 and summary["failed"] == 1
        assert summary["models"]["a"]["slo_attainment"] == 1.0


def test_bench_serve_cli_writes_json_and_plot(server: Any, tmp_path: Path, capsys) -> None:
    from fineserve.cli import main

    out, plot = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["bench", "serve", "--url", server.url, "--quiet", "--json", "--out", str(out),
            "--plot", str(plot), "--slo", "a=1.0,0.5", "--workload",
            "gamma:rate=40,cv=2,duration=1.5,alpha=1,prompt=16,output=6,slo_ttft=2"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads(out.read_text())
    s = result["summary"]
    assert s["completed"] == s["requests"] > 10 and set(s["models"]) <= {"a", "b", "c"}
    assert s["tokens_per_s"] > 0 and s["ttft_s"]["p99"] is not None
    assert result["workload"]["slos"]["a"] == [1.0, 0.5]
    assert plot.stat().st_size > 10_000
    assert main(["bench", "serve", "--url", server.url, "--workload", "bad:x=1"]) == 2
