"""The engine loop: local scheduler + KV memory + an executor, driven by a clock.

`begin_step(now) -> StepPlan`, then the executor runs the plan, then
`finish_step(result, now) -> outputs`. `step()` does all three with the engine's own clock and
executor. Invariants: steps strictly alternate begin/finish; outputs produced between steps
(aborts, rejections) come out of the next `finish_step` (or `drain_outputs`).
"""

from __future__ import annotations

from collections.abc import Sequence as Seqs

from fineserve.engine.clock import Clock, VirtualClock
from fineserve.engine.step import Executor, RequestOutput, StepPlan, StepResult
from fineserve.scheduler.local.scheduler import LocalScheduler


class Engine:
    """One device's engine (see the module docstring). Not thread-safe: `AsyncEngine` wraps
    it for concurrent use."""

    def __init__(
        self, scheduler: LocalScheduler, executor: Executor, clock: Clock | None = None
    ) -> None:
        self.scheduler = scheduler
        self.executor = executor
        self.clock: Clock = clock if clock is not None else VirtualClock()
        self._plan: StepPlan | None = None

    def add_request(
        self,
        request_id: str,
        model: str,
        prompt_token_ids: Seqs[int],
        max_tokens: int,
        *,
        sampling: object = None,
        stop_token_ids: Seqs[int] = (),
        arrival_s: float | None = None,
    ) -> None:
        """Queue a request (arrival = now unless given); `InvalidRequestError` if it can never
        be served, leaving every other request untouched."""
        self.scheduler.add_request(
            request_id,
            model,
            prompt_token_ids,
            max_tokens,
            self.clock.now() if arrival_s is None else arrival_s,
            sampling=sampling,
            stop_token_ids=frozenset(stop_token_ids),
        )

    def abort(self, request_id: str) -> bool:
        """End a request and free its pages; its final output comes with the next outputs."""
        return self.scheduler.abort(request_id)

    def begin_step(self, now: float) -> StepPlan:
        if self._plan is not None:
            raise RuntimeError(f"step {self._plan.step_id} has not been finished")
        self._plan = self.scheduler.schedule(now)
        return self._plan

    def finish_step(self, result: StepResult, now: float) -> list[RequestOutput]:
        if self._plan is None:
            raise RuntimeError("finish_step without begin_step")
        plan, self._plan = self._plan, None
        return self.scheduler.update(plan, result, now)

    def step(self) -> list[RequestOutput]:
        """One full step on the engine's clock. An empty plan runs nothing and takes no time."""
        plan = self.begin_step(self.clock.now())
        if plan.empty:
            result = StepResult(plan.step_id, {}, 0.0)
        else:
            result = self.executor.execute(plan)
            self.clock.advance(result.duration_s)
        return self.finish_step(result, self.clock.now())

    def drain_outputs(self) -> list[RequestOutput]:
        """Outputs produced outside a step (aborts, rejections), for an idle engine."""
        return self.scheduler.pending_outputs()

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def has_unfinished(self) -> bool:
        return bool(self.scheduler.seqs)

    def run_until_idle(self, max_steps: int = 1_000_000) -> list[RequestOutput]:
        """Step until no request is left (tests and offline runs); returns every output."""
        outputs: list[RequestOutput] = []
        for _ in range(max_steps):
            if not self.has_work():
                return outputs
            outputs.extend(self.step())
        raise RuntimeError(f"still busy after {max_steps} steps")
