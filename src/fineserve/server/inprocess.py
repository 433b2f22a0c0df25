"""The default backend: one `AsyncEngine` in this process (local scheduler + KV Slab + executor).

`InProcessBackend.load(config)` loads every model folder into one arena and runs it with the
torch executor; `simulated.simulated_backend(...)` puts the simulated executor behind the same
class (instant tokens, for overhead benchmarks and fast tests).

Invariants:
- `in_flight()` counts requests between a successful `generate` and the end of their stream;
  a model with `max_queue` requests in flight refuses more with `BackendError("queue_full")`;
- leaving a stream early aborts the request in the engine, which frees its pages;
- after `stop()` begins, `generate` refuses with "unavailable"; `stop` waits for in-flight
  requests (up to its timeout), aborts what is left, then stops the engine thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from fineserve.engine.async_engine import AsyncEngine
from fineserve.engine.engine import Engine
from fineserve.server.backend import (
    BackendError,
    BackendStats,
    Delta,
    GenerateRequest,
    KVStats,
    ModelInfo,
    ModelLoad,
    SamplingOptions,
    TokenLogprob,
)

T = TypeVar("T")


class ServingEngine(AsyncEngine):
    """`AsyncEngine` plus a locked read of the engine for metrics (same lock as its steps)."""

    def read(self, fn: Callable[[Engine], T]) -> T:
        with self._lock:
            return fn(self.engine)


class LogprobSink:
    """Logprobs recorded by the executor thread, read by the event loop: request id ->
    {output index: TokenLogprob}. Thread-safe; entries go when their request's stream ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, dict[int, TokenLogprob]] = {}

    def put(self, request_id: str, index: int, value: TokenLogprob) -> None:
        with self._lock:
            self._data.setdefault(request_id, {})[index] = value

    def take(self, request_id: str, index: int) -> TokenLogprob | None:
        with self._lock:
            return self._data.get(request_id, {}).pop(index, None)

    def drop(self, request_id: str) -> None:
        with self._lock:
            self._data.pop(request_id, None)


class RecordingRunner:
    """Wraps a model runner: passes `step` through and records the logprobs it sampled."""

    def __init__(self, inner: Any, sink: LogprobSink) -> None:
        self.inner = inner
        self.sink = sink

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def step(self, chunks: Sequence[Any]) -> list[Any]:
        results = self.inner.step(chunks)
        for chunk, res in zip(chunks, results, strict=True):
            params = chunk.sampling
            if res is None or params is None or params.logprobs is None:
                continue
            top = dict(res.top_logprobs or {})
            logprob = res.logprob if res.logprob is not None else 0.0
            self.sink.put(str(chunk.seq_id), chunk.output_index, TokenLogprob(
                res.token_id, float(logprob), top))  # fmt: skip
        return results


def _kv_stats(engine: Engine) -> KVStats:
    from fineserve.memory.accounting import account

    alloc = engine.scheduler.pages.allocator
    usage = alloc.usage()
    acc = account(usage)
    slab_bytes = int(usage.extra.get("slab_bytes", 0))
    slabs_of = getattr(alloc, "slabs_of", None)
    slabs = {
        m: (len(slabs_of(m)) if slabs_of else (u.held_bytes // slab_bytes if slab_bytes else 0))
        for m, u in usage.models.items()
    }
    return KVStats(
        arena_bytes=usage.arena_bytes,
        free_bytes=acc.free_bytes,
        stranded_bytes=acc.stranded_bytes,
        edge_bytes=acc.edge_bytes,
        free_slabs=int(usage.extra.get("free_slabs", 0)),
        slab_bytes=slab_bytes,
        slabs=slabs,
        used_pages={m: u.used_pages for m, u in usage.models.items()},
        used_bytes={m: u.used_pages * u.page_bytes for m, u in usage.models.items()},
    )


def _snapshot(engine: Engine) -> BackendStats:
    sched = engine.scheduler
    load = {}
    for name in sched.models:
        running = sched.num_running(name)
        waiting = sum(1 for s in sched.waiting.values() if s.model == name)
        load[name] = ModelLoad(running=running, waiting=waiting)
    preempt = dict(sched.stats.preemptions_by_model)
    return BackendStats(load=load, kv=_kv_stats(engine), preemptions=preempt)


class InProcessBackend:
    """`Backend` over a `ServingEngine` (see the module docstring)."""

    def __init__(
        self,
        front: ServingEngine,
        models: Sequence[ModelInfo],
        make_sampling: Callable[[SamplingOptions], Any],
        sink: LogprobSink | None = None,
    ) -> None:
        self.front = front
        self._models = {m.name: m for m in models}
        self._make_sampling = make_sampling
        self._sink = sink or LogprobSink()
        self._in_flight: dict[str, int] = {m: 0 for m in self._models}
        self._live: set[str] = set()
        self._draining = False
        self._idle = asyncio.Event()

    @classmethod
    def load(cls, config: Any) -> InProcessBackend:
        """Load `config.models` (a `ServeConfig`) with the torch executor; see `torch_backend`."""
        from fineserve.server.torch_backend import load_torch_backend

        return load_torch_backend(config)

    def models(self) -> Sequence[ModelInfo]:
        return list(self._models.values())

    async def start(self) -> None:
        self.front.start()

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        self._draining = True
        if self.in_flight():
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
            except asyncio.TimeoutError:
                for rid in list(self._live):
                    self.front.abort(rid)
        await self.front.stop()

    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    def stats(self) -> BackendStats:
        return self.front.read(_snapshot)

    def abort(self, request_id: str) -> None:
        self.front.abort(request_id)

    def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if self._draining:
            raise BackendError("unavailable", "the server is shutting down", retry_after_s=5)
        info = self._models.get(request.model)
        if info is None:
            raise BackendError("unknown_model", f"the model {request.model!r} does not exist")
        if self._in_flight[request.model] >= info.max_queue:
            raise BackendError(
                "queue_full",
                f"model {request.model!r} has {info.max_queue} requests in flight; retry later",
                retry_after_s=1,
            )
        stream = self._submit(request)
        self._in_flight[request.model] += 1
        self._live.add(request.request_id)
        return self._deltas(request, stream)

    def _submit(self, request: GenerateRequest) -> AsyncIterator[Any]:
        from fineserve.scheduler.local import InvalidRequestError

        try:
            sampling = self._make_sampling(request.sampling)
        except (ValueError, TypeError) as exc:
            raise BackendError("invalid", str(exc)) from None
        try:
            return self.front.add_request(
                request.request_id,
                request.model,
                request.prompt_token_ids,
                request.sampling.max_tokens,
                sampling=sampling,
                stop_token_ids=request.sampling.stop_token_ids,
            )
        except InvalidRequestError as exc:
            message = str(exc)
            kind = "too_large" if "does not fit" in message else "invalid"
            raise BackendError(kind, message) from None

    async def _deltas(self, request: GenerateRequest, stream: AsyncIterator[Any]) -> Any:
        rid, want = request.request_id, request.sampling.logprobs is not None
        emitted = 0
        try:
            async for out in stream:
                ids = tuple(out.token_ids)
                logprobs = None
                if want:
                    got = [self._sink.take(rid, emitted + k) for k in range(len(ids))]
                    logprobs = tuple(
                        g if g is not None else TokenLogprob(t, 0.0)
                        for g, t in zip(got, ids, strict=True)
                    )
                emitted += len(ids)
                yield Delta(ids, logprobs, out.finished, out.finish_reason, out.error)
        finally:
            await _close(stream)
            self._sink.drop(rid)
            self._live.discard(rid)
            self._in_flight[request.model] -= 1
            if self._draining and not self.in_flight():
                self._idle.set()


async def _close(stream: AsyncIterator[Any]) -> None:
    """Close an async generator (its `finally` aborts the request when it did not finish)."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
