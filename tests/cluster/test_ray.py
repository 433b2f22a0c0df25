"""Ray: two actors, three tiny models, requests through the HTTP server, one actor killed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from fineserve.cli import main as cli  # noqa: E402
from fineserve.cluster import build_gateway, init_ray  # noqa: E402
from fineserve.scheduler.placement.fileformat import parse_placement_document  # noqa: E402


def placement_doc(folders: dict[str, Path]) -> dict:
    models = {
        n: {"arch": n, "qformat": "fp32", "path": str(p), "ttft_slo_s": 5.0, "max_model_len": 256}
        for n, p in folders.items()
    }
    groups = {"a": ["n0g0"], "b": ["n0g0"], "c": ["n0g1"]}
    return {
        "fineserve_placement": 1,
        "policy": "hand",
        "models": models,
        "instances": [{"model": n, "tp": 1, "replica": 0, "gpus": groups[n]} for n in folders],
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for k, name in enumerate(("a", "b", "c")):
        out[name] = root / name
        arch = "qwen3" if name == "c" else "llama"
        assert cli(["make-model", "--arch", arch, "--size", "tiny", "--precision", "fp32",
                    "--out", str(out[name]), "--seed", str(k)]) == 0  # fmt: skip
    return out


@pytest.mark.slow
def test_two_actors_three_models_kill_and_recover(folders: dict[str, Path]) -> None:
    import httpx

    from fineserve.server.app import create_app
    from fineserve.server.launch import LiveServer

    init_ray()
    placement = parse_placement_document(placement_doc(folders))
    gateway = build_gateway(placement, backend="ray", health_interval_s=0.5)
    with LiveServer(create_app(gateway)) as server:
        url = server.url + "/v1/completions"

        def call(model: str, n: int = 8) -> int:
            body = {"model": model, "prompt": "hello world", "max_tokens": n, "temperature": 0}
            return httpx.post(url, json=body, timeout=60).status_code

        for m in ("a", "b", "c"):
            assert call(m) == 200
        assert {w for m in "ab" for w in gateway.workers_for(m)} == {"n0g0"}
        assert gateway.workers_for("c") == ["n0g1"]

        statuses: list[int] = []
        lock = threading.Lock()

        def load(model: str) -> None:
            code = call(model, 48)
            with lock:
                statuses.append(code)

        threads = [threading.Thread(target=load, args=("ab"[k % 2],)) for k in range(8)]
        threads += [threading.Thread(target=load, args=("c",)) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        victim = next(s.worker for n, s in gateway._slots.items() if n == "n0g0")
        ray.kill(victim.actor, no_restart=False)
        for t in threads:
            t.join(60)
        counts = Counter(statuses)
        assert len(statuses) == 10 and set(counts) <= {200, 503}, counts

        deadline = time.monotonic() + 30
        while call("a") != 200:
            assert time.monotonic() < deadline, "not serving again within 30 s"
            time.sleep(0.5)
        assert call("c") == 200
    asyncio.run(asyncio.sleep(0))
