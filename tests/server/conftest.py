"""Live servers shared by the server tests (module scope keeps the suite fast).

`tiny_models`: two tiny model folders (Llama FP16, Qwen2 AWQ), made once per session.
`live`: the real server (torch executor on the CPU) with those models, an API key, and a
third model name `llama-q1` (same folder) whose queue holds one request, to provoke 429.
`sim_live`: the same API over the simulated executor, paced at 5 ms a step.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fineserve.server.app import AppConfig, create_app
from fineserve.server.config import ModelConfig, ServeConfig
from fineserve.server.launch import LiveServer

API_KEY = "sk-test-fineserve"


@dataclass
class Live:
    server: LiveServer
    backend: Any

    @property
    def url(self) -> str:
        return self.server.url

    def used_pages(self) -> dict[str, int]:
        return dict(self.backend.stats().kv.used_pages)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from fineserve.execution import make_model

    root = tmp_path_factory.mktemp("server-models")
    out = {}
    for name, arch, precision in (("llama", "llama", "fp16"), ("qwen-awq", "qwen2", "awq")):
        parser = argparse.ArgumentParser()
        make_model.add_arguments(parser)
        argv = ["--arch", arch, "--size", "tiny", "--precision", precision]
        make_model.run(parser.parse_args([*argv, "--out", str(root / name)]))
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def live(tiny_models: dict[str, Path]) -> Iterator[Live]:
    from fineserve.server.torch_backend import load_torch_backend

    models = (
        ModelConfig("llama", tiny_models["llama"], slo_ttft_s=5.0, slo_tpot_s=1.0),
        ModelConfig("qwen-awq", tiny_models["qwen-awq"]),
        ModelConfig("llama-q1", tiny_models["llama"], max_queue=1),
    )
    backend = load_torch_backend(ServeConfig(models=models, arena_bytes=8 << 20))
    app = create_app(backend, AppConfig(api_key=API_KEY, max_body_bytes=256 << 10))
    with LiveServer(app) as server:
        yield Live(server, backend)


@pytest.fixture(scope="module")
def sim_live() -> Iterator[Live]:
    from fineserve.server.simulated import simulated_backend

    backend = simulated_backend(("sim-a", "sim-b"), step_s=0.005, max_model_len=512)
    with LiveServer(create_app(backend)) as server:
        yield Live(server, backend)
