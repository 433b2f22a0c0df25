"""`AsyncEngine`: an asyncio front over `Engine`, with the step loop in a background thread.

`add_request(...)` validates at once (raising `InvalidRequestError`) and returns an async
iterator of `RequestOutput`s (one per step with a new token, the last one `finished`).
Leaving the iteration early (break, cancel, client gone) aborts the request. `abort(id)` ends a
request and frees its pages.

Threading: the engine is touched only under `_lock`; the executor runs a plan outside it, so
submissions and aborts never wait for a model step and the event loop never blocks on torch.
Outputs go back to the event loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence

from fineserve.engine.engine import Engine
from fineserve.engine.step import RequestOutput, StepResult


class AsyncEngine:
    """Use as `async with AsyncEngine(engine) as front:` or call `start()` / `stop()`."""

    def __init__(self, engine: Engine, idle_wait_s: float = 0.05) -> None:
        self.engine = engine
        self.idle_wait_s = idle_wait_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, asyncio.Queue[RequestOutput]] = {}
        self.error: BaseException | None = None

    async def __aenter__(self) -> AsyncEngine:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fineserve-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the loop thread (in-flight requests stay where they are)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        await asyncio.to_thread(thread.join)

    def add_request(
        self,
        request_id: str,
        model: str,
        prompt_token_ids: Sequence[int],
        max_tokens: int,
        *,
        sampling: object = None,
        stop_token_ids: Sequence[int] = (),
    ) -> AsyncIterator[RequestOutput]:
        """Submit a request; iterate the result for its streamed outputs."""
        if self._thread is None:
            raise RuntimeError("AsyncEngine is not started")
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        with self._lock:
            self.engine.add_request(
                request_id,
                model,
                prompt_token_ids,
                max_tokens,
                sampling=sampling,
                stop_token_ids=stop_token_ids,
            )
            self._queues[request_id] = queue
        self._wake.set()
        return self._stream(request_id, queue)

    async def _stream(
        self, request_id: str, queue: asyncio.Queue[RequestOutput]
    ) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while not finished:
                out = await queue.get()
                finished = out.finished
                yield out
        finally:
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> bool:
        """End a request now (its stream ends with finish_reason "abort")."""
        with self._lock:
            done = self.engine.abort(request_id)
        self._wake.set()
        return done

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._step_once():
                    self._wake.wait(self.idle_wait_s)
                    self._wake.clear()
        except BaseException as exc:  # surfaced to every open stream
            self.error = exc
            self._fail_all(exc)

    def _step_once(self) -> bool:
        """One engine step; False when there was nothing to run."""
        engine = self.engine
        with self._lock:
            outputs = engine.drain_outputs()
            plan = engine.begin_step(engine.clock.now()) if engine.has_unfinished() else None
        if plan is None:
            self._deliver(outputs)
            return False
        if plan.empty:
            result = StepResult(plan.step_id, {}, 0.0)
        else:
            result = engine.executor.execute(plan)
            engine.clock.advance(result.duration_s)
        with self._lock:
            outputs += engine.finish_step(result, engine.clock.now())
        self._deliver(outputs)
        return not plan.empty

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        if not outputs or self._loop is None:
            return
        routed = []
        with self._lock:
            for out in outputs:
                queue = self._queues.get(out.request_id)
                if queue is None:
                    continue
                if out.finished:
                    del self._queues[out.request_id]
                routed.append((queue, out))
        loop = self._loop
        if not loop.is_closed():
            loop.call_soon_threadsafe(_put_all, routed)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            queues, self._queues = self._queues, {}
        routed = [
            (q, RequestOutput(rid, "", [], True, "error", f"engine failed: {exc!r}"))
            for rid, q in queues.items()
        ]
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_put_all, routed)


def _put_all(routed: list[tuple[asyncio.Queue[RequestOutput], RequestOutput]]) -> None:
    for queue, out in routed:
        queue.put_nowait(out)
