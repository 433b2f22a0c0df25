"""A replica lost mid-request, seen by an HTTP client: 503 in OpenAI's error shape
(non-streamed), or a final SSE error event after the stream has started."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from fineserve.cluster import Gateway, LocalWorker
from fineserve.cluster.ray_backend import build_backend
from fineserve.server.app import create_app
from fineserve.server.launch import LiveServer


@pytest.fixture
def served() -> Iterator[tuple[LiveServer, Gateway, dict[str, LocalWorker]]]:
    workers = {n: LocalWorker(n, lambda n=n: build_backend(("sim", (n,)))) for n in ("a", "b")}
    gateway = Gateway(list(workers.values()), health_interval_s=0.05)
    with LiveServer(create_app(gateway), graceful_s=5) as server:
        yield server, gateway, workers
        for w in workers.values():  # revive "lost" workers so the gateway stops their engines
            w.alive = True


def _kill_when_running(gateway: Gateway, worker: LocalWorker) -> threading.Thread:
    def kill() -> None:
        deadline = time.monotonic() + 10
        while not gateway.in_flight() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # some tokens out
        worker.alive = False

    t = threading.Thread(target=kill)
    t.start()
    return t


def _body(model: str, stream: bool) -> dict:
    return {"model": model, "prompt": [1, 2, 3], "max_tokens": 3000, "stream": stream,
            "ignore_eos": True, "temperature": 0}  # fmt: skip


def test_lost_replica_non_streamed_is_503(served: tuple) -> None:
    server, gateway, workers = served
    killer = _kill_when_running(gateway, workers["a"])
    r = httpx.post(server.url + "/v1/completions", json=_body("a", False), timeout=30)
    killer.join()
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["type"] == "service_unavailable" and err["code"] == "replica_lost"
    assert set(err) == {"message", "type", "param", "code"} and "Retry-After" in r.headers
    # routed around: the dead replica's model is 503 at once, the other model still answers
    r = httpx.post(server.url + "/v1/completions", json=_body("a", False), timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_replica"
    ok = httpx.post(server.url + "/v1/completions", json={**_body("b", False), "max_tokens": 4})
    assert ok.status_code == 200
    assert gateway.in_flight() == 0


def test_lost_replica_streamed_ends_with_error_event(served: tuple) -> None:
    server, gateway, workers = served
    killer = _kill_when_running(gateway, workers["b"])
    events = []
    with httpx.stream("POST", server.url + "/v1/completions", json=_body("b", True)) as r:
        assert r.status_code == 200  # headers went out before the replica was lost
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    killer.join()
    assert len(events) > 1 and events[-1] != "[DONE]"
    last = json.loads(events[-1])
    assert last["error"]["type"] == "service_unavailable"
    assert last["error"]["code"] == "replica_lost"
    assert "choices" in json.loads(events[0])
    assert gateway.in_flight() == 0


def test_lost_replica_openai_client(served: tuple) -> None:
    openai = pytest.importorskip("openai")
    server, gateway, workers = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    killer = _kill_when_running(gateway, workers["a"])
    with pytest.raises(openai.APIStatusError) as exc:
        client.completions.create(
            model="a", prompt=[1, 2, 3], max_tokens=3000, extra_body={"ignore_eos": True}
        )
    killer.join()
    assert exc.value.status_code == 503
