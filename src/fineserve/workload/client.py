"""An async load client for any OpenAI-compatible server (ours, vLLM, ...), over httpx.

`run_plan(plan, config)` sends every `PlannedRequest` at its planned time (seconds after the
start) as a streamed `/v1/completions` (or `/v1/chat/completions`) call and returns one
`RequestRecord` per request, in plan order, for `workload.metrics.summarize`.

Timing (monotonic clock, seconds since the run started): `arrival_s` is when the request was
sent; `first_token_s` when the first chunk with text arrived; `token_times_s` one entry per
chunk with text; `finish_s` when the stream ended. Output tokens come from the final usage chunk
(`stream_options.include_usage`) when the server sends one, else from the number of text chunks.
A non-2xx answer, an error event, a transport error or a timeout sets `error`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fineserve.workload.metrics import RequestRecord

WORDS = ("the", "time", "year", "way", "day", "man", "world", "life", "hand", "part", "child",
         "place", "work", "week", "case", "point", "number", "group", "fact", "house")  # fmt: skip


@dataclass(frozen=True)
class PlannedRequest:
    """One request to send: when (s after start), to which model, how long in and out."""

    at_s: float
    model: str
    prompt_tokens: int
    output_tokens: int
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None


@dataclass(frozen=True)
class ClientConfig:
    """Where and how to send. `endpoint`: "completions" or "chat"; `ignore_eos` (a vLLM and
    FineServe extension) makes outputs run to `max_tokens`; `max_concurrency` 0 = unbounded."""

    url: str
    api_key: str | None = None
    endpoint: str = "completions"
    timeout_s: float = 300.0
    max_concurrency: int = 0
    ignore_eos: bool = True
    temperature: float = 0.0

    @property
    def base(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/v1") else url + "/v1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def prompt_text(n_tokens: int, seed: int = 0) -> str:
    """About `n_tokens` tokens of plain English words (one word is about one token)."""
    return " ".join(WORDS[(seed + 7 * i) % len(WORDS)] for i in range(max(1, n_tokens)))


def _body(req: PlannedRequest, cfg: ClientConfig, index: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": req.model,
        "max_tokens": req.output_tokens,
        "temperature": cfg.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if cfg.ignore_eos:
        body["ignore_eos"] = True
    text = prompt_text(req.prompt_tokens, index)
    if cfg.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    return body


def is_token_chunk(obj: dict[str, Any]) -> bool:
    """Whether a stream chunk carries output: visible text, or an empty text for a token whose
    text is not visible yet. Usage-only chunks, the chat chunk that only announces the role,
    and an empty closing chunk (finish_reason set) carry none."""
    choices = obj.get("choices") or []
    if not choices:
        return False
    c = choices[0]
    if "delta" in c:
        delta = c.get("delta") or {}
        text = delta.get("content")
        if text is None or (text == "" and "role" in delta):
            return False
    else:
        text = c.get("text")
        if text is None:
            return False
    return text != "" or c.get("finish_reason") is None


async def _read_stream(resp: Any, rec: RequestRecord, t0: float) -> None:
    chunks = 0
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        obj = json.loads(data)
        if "error" in obj:
            rec.error = str(obj["error"].get("message", obj["error"]))
            return
        if is_token_chunk(obj):
            now = time.monotonic() - t0
            if rec.first_token_s is None:
                rec.first_token_s = now
            rec.token_times_s.append(now)
            chunks += 1
        usage = obj.get("usage")
        if usage:
            rec.output_tokens = int(usage.get("completion_tokens", 0))
            rec.prompt_tokens = int(usage.get("prompt_tokens", rec.prompt_tokens))
    if not rec.output_tokens:
        rec.output_tokens = chunks


async def send_one(
    client: Any, req: PlannedRequest, cfg: ClientConfig, t0: float, index: int
) -> RequestRecord:
    """Send one streamed request now; never raises for server-side problems."""
    import httpx

    rec = RequestRecord(req.model, time.monotonic() - t0, prompt_tokens=req.prompt_tokens,
                        slo_ttft_s=req.slo_ttft_s, slo_tpot_s=req.slo_tpot_s)  # fmt: skip
    path = "/chat/completions" if cfg.endpoint == "chat" else "/completions"
    try:
        async with client.stream("POST", cfg.base + path, json=_body(req, cfg, index),
                                 headers=cfg.headers()) as resp:  # fmt: skip
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                rec.error = f"HTTP {resp.status_code}: {text[:200]}"
                return rec
            await _read_stream(resp, rec, t0)
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
        return rec
    if rec.error is None:
        rec.finish_s = time.monotonic() - t0
        if rec.first_token_s is None:
            rec.error = "no output"
    return rec


async def run_plan(
    plan: Sequence[PlannedRequest],
    cfg: ClientConfig,
    on_done: Callable[[RequestRecord], None] | None = None,
) -> tuple[list[RequestRecord], float]:
    """Send the plan (see the module docstring); returns the records and the wall duration."""
    import httpx

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    sem = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency > 0 else None
    timeout = httpx.Timeout(cfg.timeout_s, connect=30.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        t0 = time.monotonic()

        async def one(i: int, req: PlannedRequest) -> RequestRecord:
            delay = req.at_s - (time.monotonic() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            if sem is None:
                rec = await send_one(client, req, cfg, t0, i)
            else:
                async with sem:
                    rec = await send_one(client, req, cfg, t0, i)
            if on_done is not None:
                on_done(rec)
            return rec

        records = await asyncio.gather(*(one(i, r) for i, r in enumerate(plan)))
        return list(records), time.monotonic() - t0


async def served_models(url: str, api_key: str | None = None, timeout_s: float = 30.0) -> list[str]:
    """Model ids from `GET /v1/models`."""
    import httpx

    cfg = ClientConfig(url, api_key)
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        resp = await client.get(cfg.base + "/models", headers=cfg.headers())
        resp.raise_for_status()
        return [str(m["id"]) for m in resp.json().get("data", [])]
