"""`fineserve serve --placement FILE`: a placement from `fineserve plan --out` (three tiny models
on two GPUs), served by two in-process workers behind the gateway; the official `openai` client
gets an answer from each model, and each request runs on the worker the placement gave it."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fineserve.cli import build_parser
from fineserve.cli import main as cli
from fineserve.scheduler.placement.fileformat import load_placement_file
from fineserve.server.launch import LiveServer

openai = pytest.importorskip("openai")

MODELS = {"llama-a": ("llama", "fp16"), "qwen-b": ("qwen2", "awq"), "llama-c": ("llama", "fp32")}


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The placement file of `fineserve plan --out`, beside its config and model folders."""
    root = tmp_path_factory.mktemp("placed")
    for k, (name, (arch, precision)) in enumerate(MODELS.items()):
        assert cli(["make-model", "--arch", arch, "--size", "tiny", "--precision", precision,
                    "--out", str(root / name), "--seed", str(k)]) == 0  # fmt: skip
    config = {
        "cluster": {"nodes": 1, "gpus_per_node": 2, "gpu_memory_gib": 80, "reserve_gib": 4},
        "cost_model": "h100",
        "defaults": {"prompt_len": 64, "output_len": 32, "ttft_slo_ms": 5000, "tp": 1},
        "rates": {"total": 2, "alpha": 0.9},
        "models": [{"name": n, "path": n} for n in MODELS],  # relative to the config
    }
    (root / "cluster.yaml").write_text(yaml.safe_dump(config))
    out = root / "placement.yaml"
    assert cli(["plan", "--config", str(root / "cluster.yaml"), "--out", str(out), "--json"]) == 0
    return out


def serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def record_routing(gateway: Any, seen: list[tuple[str, str]]) -> None:
    """Wrap every worker's `generate` to note (worker, model) of each request it gets."""
    for name in list(gateway._slots):
        worker = gateway._slots[name].worker

        def generate(request: Any, _inner: Any = worker.generate, _name: str = name) -> Any:
            seen.append((_name, request.model))
            return _inner(request)

        worker.generate = generate


@pytest.fixture(scope="module")
def served(planned: Path) -> Iterator[tuple[LiveServer, Any, list[tuple[str, str]]]]:
    from fineserve.server.cli import build_serving

    serving = build_serving(serve_args("--placement", str(planned), "--arena-mb", "4"))
    seen: list[tuple[str, str]] = []
    record_routing(serving.backend, seen)
    with LiveServer(serving.app, graceful_s=10) as server:
        yield server, serving.backend, seen


def expected_workers(placement_path: Path) -> dict[str, set[str]]:
    placement = load_placement_file(placement_path)
    out: dict[str, set[str]] = {}
    for gpus, insts in placement.groups().items():
        for i in insts:
            out.setdefault(i.model, set()).add("+".join(gpus))
    return out


def test_plan_uses_both_workers(planned: Path) -> None:
    expected = expected_workers(planned)
    assert set(expected) == set(MODELS)
    assert set().union(*expected.values()) == {"n0g0", "n0g1"}


def test_each_model_answers_on_its_worker(served: tuple, planned: Path) -> None:
    server, gateway, seen = served
    expected = expected_workers(planned)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    assert sorted(m.id for m in client.models.list().data) == sorted(MODELS)
    for model, workers in expected.items():
        assert set(gateway.workers_for(model)) == workers
        # a worker's engine holds exactly the models the placement put on its GPU group
        for w in workers:
            hosted = {m.name for m in gateway._slots[w].worker.models()}
            assert hosted == {n for n, ws in expected.items() if w in ws}
        done = client.completions.create(model=model, prompt="hello", max_tokens=4, temperature=0)
        assert done.model == model and done.usage.completion_tokens >= 1
        chat = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert chat.choices[0].finish_reason in ("stop", "length")
        stream = client.completions.create(
            model=model, prompt="hello", max_tokens=6, temperature=0, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        chunks = list(stream)
        assert chunks[-1].choices[0].finish_reason == "length"
        routed = [w for w, m in seen if m == model]
        assert len(routed) == 3 and set(routed) <= workers  # on the placement's worker
    assert {w for w, _ in seen} == {"n0g0", "n0g1"}
    assert gateway.in_flight() == 0


def test_unknown_model_is_404(served: tuple) -> None:
    server, _, _ = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi", max_tokens=2)


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    from fineserve.cli import CliError
    from fineserve.server.cli import build_serving

    with pytest.raises(CliError) as exc:
        build_serving(serve_args(*argv))
    assert cli(["serve", *argv]) == 2  # the command prints it on one line and exits 2
    assert "error:" in capsys.readouterr().err
    return str(exc.value)


def test_cli_errors(planned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "does not exist" in _error(capsys, "--placement", str(tmp_path / "none.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [1, 2\n")
    assert "not a valid placement file" in _error(capsys, "--placement", str(bad))
    bad.write_text(yaml.safe_dump({"policy": "x"}))
    assert "not a valid placement file" in _error(capsys, "--placement", str(bad))
    assert "unknown backend 'gpu'" in _error(
        capsys, "--placement", str(planned), "--backend", "gpu"
    )
    assert "--placement" in _error(capsys, "--backend", "ray", "--model", f"a={planned.parent}")
    assert "drop --model" in _error(
        capsys, "--placement", str(planned), "--model", f"x={planned.parent / 'llama-a'}"
    )
    doc = yaml.safe_load(planned.read_text())
    for name, entry in doc["models"].items():  # the copy lives elsewhere: absolute paths
        entry["path"] = str(planned.parent / name)
    doc["models"]["qwen-b"]["path"] = str(tmp_path)  # a folder, but no model in it
    moved = tmp_path / "moved.yaml"
    moved.write_text(yaml.safe_dump(doc))
    msg = _error(capsys, "--placement", str(moved))
    assert "'qwen-b'" in msg and "not a model folder" in msg
    doc["models"]["qwen-b"]["path"] = None
    moved.write_text(yaml.safe_dump(doc))
    assert "has no path" in _error(capsys, "--placement", str(moved))


def test_sim_backend_serves_a_placement_without_model_files(planned: Path) -> None:
    from fineserve.server.cli import build_serving

    serving = build_serving(serve_args("--placement", str(planned), "--backend", "sim"))
    with LiveServer(serving.app, graceful_s=5) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        for model in MODELS:
            done = client.completions.create(model=model, prompt=[1, 2, 3], max_tokens=3)
            assert done.usage.completion_tokens == 3
