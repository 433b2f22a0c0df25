"""Clients that leave mid-stream free their pages; shutdown drains in-flight requests."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx

API_KEY = "sk-test-fineserve"


async def _stream(client: httpx.AsyncClient, url: str, body: dict[str, Any], leave: bool) -> int:
    """Stream one completion; with `leave`, hang up after the first token. Returns chunks."""
    chunks = 0
    async with client.stream("POST", url + "/v1/completions", json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                chunks += 1
                if leave:
                    return chunks
    return chunks


async def _many(url: str, n: int, model: str, short: int, long: int, headers: Any = None) -> None:
    limits = httpx.Limits(max_connections=None)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as client:
        jobs = []
        for i in range(n):
            leave = i % 3 == 0
            body = {"model": model, "prompt": f"w{i} w{i + 1} w{i + 2}", "stream": True,
                    "max_tokens": long if leave else short, "ignore_eos": True}  # fmt: skip
            jobs.append(_stream(client, url, body, leave))
        counts = await asyncio.gather(*jobs)
    assert all(c >= 1 for c in counts)


def _wait_for_no_pages(live: Any, timeout_s: float = 30.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    pages = live.used_pages()
    while any(pages.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
        pages = live.used_pages()
    return pages


def test_100_streams_a_third_leaving_early_leave_no_used_pages(sim_live: Any) -> None:
    asyncio.run(_many(sim_live.url, 100, "sim-a", short=20, long=400))
    assert _wait_for_no_pages(sim_live) == {"sim-a": 0, "sim-b": 0}
    assert sim_live.backend.in_flight() == 0


def test_real_models_free_pages_of_clients_that_leave(live: Any) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    asyncio.run(_many(live.url, 12, "llama", short=3, long=500, headers=headers))
    pages = _wait_for_no_pages(live)
    assert all(v == 0 for v in pages.values()), pages


def test_shutdown_drains_in_flight_streams_and_refuses_new_ones() -> None:
    from fineserve.server.app import create_app
    from fineserve.server.launch import LiveServer
    from fineserve.server.simulated import simulated_backend

    backend = simulated_backend(("m",), step_s=0.01)
    server = LiveServer(create_app(backend), graceful_s=30).start()
    body = {"model": "m", "prompt": "a b", "max_tokens": 60, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    seen: list[dict[str, Any]] = []
    first = threading.Event()

    def consume() -> None:
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    seen.append(json.loads(line[6:]))
                    first.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first.wait(10)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    reader.join(30)
    stopper.join(30)
    assert seen[-1]["usage"]["completion_tokens"] == 60  # the stream ran to its end
    assert backend.in_flight() == 0
    assert backend.stats().kv.used_pages == {"m": 0}
