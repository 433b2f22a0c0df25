"""The gateway: one `Backend` in front of many workers, routing each request by model name.

A *worker* hosts one engine with its co-located models (one GPU or TP group of a placement).
The gateway sends each request to the healthy, non-draining worker hosting its model that has
the least outstanding work *of that model* (prompt + max tokens of its requests in flight; ties:
the least outstanding work of every model), and implements the server's `Backend` protocol, so
`create_app(gateway)` serves a whole cluster. A model's own queue is what its time to first
token waits behind: co-located models run in step lanes of their own and reach it only through
the GPU they share, so a replica beside a busy neighbour but with a short queue of its own is
the better choice (the simulator routes the same way, `sim.loop.least_loaded`).

Invariants:
- no new request goes to an unhealthy or draining worker; with no such worker for the model the
  request is refused at once with `BackendUnavailable` (HTTP 503, Retry-After);
- when a worker dies mid-request, that request fails fast: its stream raises
  `BackendUnavailable` (code "replica_lost"; the server answers a non-streamed request with 503
  and ends a started SSE stream with an error event); the worker is marked unhealthy until a
  health ping succeeds again;
- a request a worker rejects before its first token (finish reason "rejected": that
  replica's admission cannot meet its TTFT SLO) is sent on to the least loaded replica of its
  model not tried yet; the client sees the rejection only when every replica has refused
  (the simulator does the same for `fineserve_plus`, `SchemeSpec.reroute_rejected`);
- `replace_worker(old, new)` starts and health-checks `new` before `old` drains (no dropped
  requests); a drained worker is stopped only when its in-flight count reaches zero.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fineserve.engine.step import REJECTED
from fineserve.server.backend import (
    BackendError,
    BackendStats,
    BackendUnavailable,
    Delta,
    GenerateRequest,
    KVStats,
    ModelInfo,
    ModelLoad,
)

RETRY_AFTER_S = 1.0


class WorkerLost(Exception):
    """The worker serving a request died or became unreachable."""


class Worker(Protocol):
    """One engine host. ``generate`` raises :class:`WorkerLost` when the host dies."""

    name: str

    def models(self) -> Sequence[ModelInfo]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def ping(self) -> bool: ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]: ...

    async def abort(self, request_id: str) -> None: ...


@dataclass
class _Slot:
    worker: Worker
    healthy: bool = True
    draining: bool = False
    outstanding: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, int] = field(default_factory=dict)  # outstanding work per model


class Gateway:
    """Routes requests over workers (see the module docstring). Use from one event loop."""

    def __init__(
        self,
        workers: Sequence[Worker],
        health_interval_s: float = 1.0,
        ping_timeout_s: float = 5.0,
    ) -> None:
        self._slots = {w.name: _Slot(w) for w in workers}
        self.health_interval_s = health_interval_s
        self.ping_timeout_s = ping_timeout_s
        self._health_task: asyncio.Task[None] | None = None
        self._owner: dict[str, str] = {}  # request id -> worker name
        self._model_of: dict[str, str] = {}  # request id -> model
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.gather(*(s.worker.start() for s in self._slots.values()))
        self._health_task = asyncio.create_task(self._health_loop())

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        while self.in_flight() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await asyncio.gather(*(s.worker.stop() for s in self._slots.values()))

    async def check_health(self) -> dict[str, bool]:
        """Ping every worker once; a worker that answers again is routed to again."""
        names = list(self._slots)
        results = await asyncio.gather(*(self._ping(self._slots[n]) for n in names))
        for n, ok in zip(names, results, strict=True):
            self._slots[n].healthy = ok
        return dict(zip(names, results, strict=True))

    async def _ping(self, slot: _Slot) -> bool:
        try:
            return bool(await asyncio.wait_for(slot.worker.ping(), timeout=self.ping_timeout_s))
        except Exception:
            return False

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            await self.check_health()

    async def add_worker(self, worker: Worker) -> None:
        """Start ``worker`` and route to it once it answers a ping."""
        await worker.start()
        slot = _Slot(worker, healthy=await self._ping(_Slot(worker)))
        self._slots[worker.name] = slot

    async def replace_worker(self, old: str, new: Worker, drain_timeout_s: float = 60.0) -> None:
        """Re-placement without dropped requests: ``new`` up first, then ``old`` drains."""
        await self.add_worker(new)
        slot = self._slots[old]
        slot.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        while slot.requests and loop.time() < deadline:
            await asyncio.sleep(0.05)
        del self._slots[old]
        await slot.worker.stop()

    # -- Backend protocol ------------------------------------------------------------------
    def models(self) -> Sequence[ModelInfo]:
        seen: dict[str, ModelInfo] = {}
        for s in self._slots.values():
            for info in s.worker.models():
                seen.setdefault(info.name, info)
        return list(seen.values())

    def workers_for(self, model: str) -> list[str]:
        """Names of the workers hosting ``model`` (any health)."""
        return [
            n for n, s in self._slots.items() if any(i.name == model for i in s.worker.models())
        ]

    def in_flight(self) -> int:
        return len(self._owner)

    def stats(self) -> BackendStats:
        counts = {info.name: 0 for info in self.models()}
        for model in self._model_of.values():
            counts[model] = counts.get(model, 0) + 1
        load = {name: ModelLoad(running=n) for name, n in counts.items()}
        return BackendStats(load=load, kv=KVStats())

    def abort(self, request_id: str) -> None:
        name = self._owner.get(request_id)
        if name in self._slots:
            task = asyncio.ensure_future(self._slots[name].worker.abort(request_id))
            task.add_done_callback(lambda t: t.exception())

    def route(self, model: str, exclude: frozenset[str] = frozenset()) -> str:
        """The worker a request for ``model`` goes to now (least outstanding work of ``model``,
        then least outstanding work), skipping the workers in ``exclude``."""
        ready = [
            (s.by_model.get(model, 0), s.outstanding, n)
            for n, s in self._slots.items()
            if n not in exclude
            and s.healthy
            and not s.draining
            and any(i.name == model for i in s.worker.models())
        ]
        if not ready:
            if not self.workers_for(model):
                raise BackendError("unknown_model", f"model {model!r} is not served")
            raise BackendUnavailable(
                f"no healthy replica of {model!r}", RETRY_AFTER_S, code="no_replica"
            )
        return min(ready)[2]

    def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if self._stopping:
            raise BackendUnavailable("shutting down", RETRY_AFTER_S, code="shutting_down")
        name = self.route(request.model)
        self._dispatch(name, request)
        return self._relay(name, request)

    def _dispatch(self, name: str, request: GenerateRequest) -> None:
        """Count ``request`` as outstanding work of worker ``name``."""
        slot = self._slots[name]
        work = len(request.prompt_token_ids) + request.sampling.max_tokens
        slot.outstanding += work
        slot.by_model[request.model] = slot.by_model.get(request.model, 0) + work
        slot.requests[request.request_id] = work
        self._owner[request.request_id] = name
        self._model_of[request.request_id] = request.model

    def _undispatch(self, name: str, request: GenerateRequest) -> None:
        slot = self._slots[name]
        work = slot.requests.pop(request.request_id, 0)
        slot.outstanding -= work
        slot.by_model[request.model] = slot.by_model.get(request.model, 0) - work
        self._owner.pop(request.request_id, None)
        self._model_of.pop(request.request_id, None)

    def _next_replica(self, request: GenerateRequest, tried: set[str]) -> str | None:
        """Another ready worker of the request's model none of ``tried`` is, or None."""
        try:
            return self.route(request.model, frozenset(tried))
        except BackendError:  # BackendUnavailable included
            return None

    async def _relay(self, name: str, request: GenerateRequest) -> AsyncIterator[Delta]:
        """Stream the worker's deltas. A rejection before any token (its admission cannot
        meet the TTFT SLO there) is sent on to the next replica not tried yet, least loaded
        first; the client sees the rejection only when every replica has refused."""
        tried = {name}
        try:
            while True:
                resend = None
                stream = self._slots[name].worker.generate(request)
                async for delta in stream:
                    if delta.finish_reason == REJECTED and not delta.token_ids:
                        resend = self._next_replica(request, tried)
                        if resend is not None:
                            break
                    yield delta
                if resend is not None and hasattr(stream, "aclose"):
                    await stream.aclose()  # left at its final (rejection) delta
                if resend is None:
                    return
                self._undispatch(name, request)
                name = resend
                tried.add(name)
                self._dispatch(name, request)
        except WorkerLost as exc:
            self._slots[name].healthy = False
            raise BackendUnavailable(
                f"replica lost: {exc}", RETRY_AFTER_S, code="replica_lost"
            ) from None
        finally:
            self._undispatch(name, request)
