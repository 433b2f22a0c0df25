"""Ray: two actors, three tiny models, served by `fineserve serve --placement FILE --backend ray`
(the function the command calls), requests through HTTP, one actor killed mid-load.

One Ray session for the module; the actors build their engines in parallel; health pings every
0.2 s, so the time the test takes is mostly Ray and torch starting up (twice for the killed
actor, which Ray restarts).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ray = pytest.importorskip("ray")

from fineserve.cli import build_parser  # noqa: E402
from fineserve.cli import main as cli  # noqa: E402

GROUPS = {"a": ["n0g0"], "b": ["n0g0"], "c": ["n0g1"]}


def placement_doc(folders: dict[str, Path]) -> dict:
    models = {
        n: {"arch": n, "qformat": "fp32", "path": str(p), "ttft_slo_s": 5.0, "max_model_len": 256}
        for n, p in folders.items()
    }
    return {
        "fineserve_placement": 1,
        "policy": "hand",
        "models": models,
        "instances": [{"model": n, "tp": 1, "replica": 0, "gpus": GROUPS[n]} for n in folders],
    }


@pytest.fixture(scope="module")
def placement_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    for k, (name, arch) in enumerate((("a", "llama"), ("b", "llama"), ("c", "qwen3"))):
        assert cli(["make-model", "--arch", arch, "--size", "tiny", "--precision", "fp32",
                    "--out", str(root / name), "--seed", str(k)]) == 0  # fmt: skip
    out = root / "placement.yaml"
    out.write_text(yaml.safe_dump(placement_doc({n: root / n for n in "abc"})))
    return out


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    """One Ray session for the module (started once, shut down at its end)."""
    from fineserve.cluster import init_ray

    yield init_ray()
    ray.shutdown()


def record_routing(gateway: Any, seen: list[tuple[str, str]]) -> None:
    """Wrap every worker's `generate` to note (worker, model) of each request it gets."""
    for name, slot in gateway._slots.items():

        def generate(request: Any, _inner: Any = slot.worker.generate, _name: str = name) -> Any:
            seen.append((_name, request.model))
            return _inner(request)

        slot.worker.generate = generate


@pytest.mark.slow
def test_two_actors_three_models_kill_and_recover(placement_file: Path, ray_session: Any) -> None:
    from fineserve.server.cli import build_serving
    from fineserve.server.launch import LiveServer

    argv = ["serve", "--placement", str(placement_file), "--backend", "ray",
            "--health-interval", "0.2", "--arena-mb", "2"]  # fmt: skip
    serving = build_serving(build_parser().parse_args(argv))
    gateway = serving.backend
    gateway.ping_timeout_s = 2.0
    seen: list[tuple[str, str]] = []
    record_routing(gateway, seen)
    with LiveServer(serving.app, graceful_s=5) as server, httpx.Client(timeout=60) as http:
        url = server.url + "/v1/completions"

        def body(model: str, n: int, stream: bool = False) -> dict:
            return {"model": model, "prompt": "hello world", "max_tokens": n, "temperature": 0,
                    "ignore_eos": True, "stream": stream}  # fmt: skip

        def call(model: str, n: int = 4) -> int:
            return http.post(url, json=body(model, n)).status_code

        # two actors, three models, each request on the actor that hosts its model
        assert sorted(gateway._slots) == ["n0g0", "n0g1"]
        pids = {ray.get(s.worker.actor.pid.remote()) for s in gateway._slots.values()}
        assert len(pids) == 2
        for m in ("a", "b", "c"):
            assert call(m) == 200
        assert sorted(seen) == [("n0g0", "a"), ("n0g0", "b"), ("n0g1", "c")]
        assert {w for m in "ab" for w in gateway.workers_for(m)} == {"n0g0"}
        assert gateway.workers_for("c") == ["n0g1"]

        # load on both actors; kill n0g0 while a stream of "a" is under way on it
        statuses: list[int] = []
        lock = threading.Lock()

        def load(model: str) -> None:
            code = httpx.post(url, json=body(model, 32), timeout=60).status_code
            with lock:
                statuses.append(code)

        threads = [threading.Thread(target=load, args=(m,)) for m in "abcabc"]
        for t in threads:
            t.start()
        victim = gateway._slots["n0g0"].worker
        events: list[str] = []
        with httpx.stream("POST", url, json=body("a", 240, stream=True), timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 2:
                        ray.kill(victim.actor, no_restart=False)
        assert len(events) > 2 and events[-1] != "[DONE]", events[-3:]
        err = json.loads(events[-1])["error"]
        assert err["type"] == "service_unavailable" and err["code"] == "replica_lost"
        for t in threads:
            t.join(60)
        counts = Counter(statuses)
        assert len(statuses) == 6 and set(counts) <= {200, 503}, counts
        assert call("c") == 200  # the other actor serves on while n0g0 restarts
        deadline = time.monotonic() + 30
        while (code := call("a")) != 200:
            assert code == 503, code
            assert time.monotonic() < deadline, "not serving again within 30 s"
            time.sleep(0.2)
        assert call("b") == 200 and call("c") == 200
        assert ray.get(victim.actor.pid.remote()) not in pids  # a restarted process
        assert gateway.in_flight() == 0
