"""The engine loop: local scheduler + KV memory + an executor, driven by a clock.

`begin_step(now) -> StepPlan`, then the executor runs the plan, then
`finish_step(result, now) -> outputs`. `step()` does all three with the engine's own clock and
executor. Outputs produced between steps (aborts, rejections) come out of the next
`finish_step` (or `drain_outputs`).

Step lanes: `begin_step(now, models=frozenset({...}))` plans a step over only those models;
several such plans may be in flight at once as long as their model sets are disjoint, and each
is finished by `finish_step(result, now)`, matched by `result.step_id`. The KV arena, the
allocator and the memory arbitration stay shared across every model; a request in a plan in
flight is never preempted and an abort of one frees its pages when its plan finishes.
`begin_step(now)` (no `models`) plans over every model and requires that no plan is in flight:
the whole-device behaviour, which `step()` uses.
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
        self._plans: dict[int, StepPlan] = {}  # in flight, by step id

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
        stream: bool = True,
    ) -> None:
        """Queue a request (arrival = now unless given); `InvalidRequestError` if it can never
        be served, leaving every other request untouched. `stream=False`: no output per token,
        only one with the first token and the final one with every token since (the request's
        TTFT, length and end time stay exact; per-token times are not reported)."""
        self.scheduler.add_request(
            request_id,
            model,
            prompt_token_ids,
            max_tokens,
            self.clock.now() if arrival_s is None else arrival_s,
            sampling=sampling,
            stop_token_ids=frozenset(stop_token_ids),
            stream=stream,
        )

    def abort(self, request_id: str) -> bool:
        """End a request and free its pages; its final output comes with the next outputs."""
        return self.scheduler.abort(request_id)

    def begin_step(
        self,
        now: float,
        models: frozenset[str] | None = None,
        max_steps: int = 1,
        horizon_pages: bool = True,
        margin: bool = True,
    ) -> StepPlan:
        """Plan a step over `models` (default: every model, with no plan in flight). Raises
        `RuntimeError` when one of the models already has a plan in flight. `max_steps > 1`
        allows a multi-step decode plan (`StepPlan.num_steps`; the simulator's horizon);
        `horizon_pages` False keeps it within the pages its sequences already hold (no page
        is reserved early); `margin` False takes pages early only where the allocator
        guarantees the single steps' grants (`LocalScheduler.schedule`)."""
        if models is None and self._plans:
            raise RuntimeError(f"step {min(self._plans)} has not been finished")
        plan = self.scheduler.schedule(now, models, max_steps, horizon_pages, margin)
        self._plans[plan.step_id] = plan
        return plan

    def fold_step(self, step_id: int, done: int) -> bool:
        """Whether the plan in flight `step_id`, after `done` iterations, may be extended by
        the plan single steps would make next (`LocalScheduler.fold_plan`: pages taken
        early for iterations not run are given back)."""
        return self.scheduler.fold_plan(self._plans[step_id], done)

    def extend_step(
        self,
        step_id: int,
        done: int,
        max_steps: int,
        horizon_pages: bool = False,
        margin: bool = True,
    ) -> int:
        """Extend the plan in flight `step_id` by the plan single steps would make after its
        `done` iterations (`LocalScheduler.extend_plan`); its iterations, 0 if it would
        differ. Finish it with one result for all iterations run."""
        plan = self._plans[step_id]
        return self.scheduler.extend_plan(plan, done, max_steps, horizon_pages, margin)

    def plan_in_flight(self, step_id: int) -> StepPlan:
        """The plan in flight `step_id`."""
        return self._plans[step_id]

    def finish_step(self, result: StepResult, now: float) -> list[RequestOutput]:
        """Apply the result of the plan with `result.step_id`; returns its outputs and every
        output produced since the last `finish_step` (aborts, rejections)."""
        if not self._plans:
            raise RuntimeError("finish_step without begin_step")
        plan = self._plans.get(result.step_id)
        if plan is None:
            raise ValueError(
                f"result of step {result.step_id}, but steps {sorted(self._plans)} are in flight"
            )
        del self._plans[result.step_id]
        return self.scheduler.update(plan, result, now)

    def in_flight(self) -> list[StepPlan]:
        """Plans begun and not yet finished (several with step lanes)."""
        return list(self._plans.values())

    def busy_models(self) -> frozenset[str]:
        """Models with a plan in flight."""
        return self.scheduler.busy_models()

    def idle_models(self) -> frozenset[str]:
        """Models with no plan in flight (a lane over any subset of them may begin)."""
        return frozenset(self.scheduler.models) - self.scheduler.busy_models()

    def step(self) -> list[RequestOutput]:
        """One full step on the engine's clock. An empty plan runs nothing and takes no time."""
        plan = self.begin_step(self.clock.now())
        if plan.empty:
            result = StepResult(plan.step_id, {}, 0.0)
        else:
            result = self.executor.execute(plan)
            self.clock.advance(result.duration_s)
        return self.finish_step(result, self.clock.now())

    def has_pending_outputs(self) -> bool:
        """Outputs produced outside a step (aborts, rejections) not collected yet: they come
        out with the next `finish_step` of any lane."""
        return self.scheduler.has_pending_outputs()

    def drain_outputs(self) -> list[RequestOutput]:
        """Outputs produced outside a step (aborts, rejections), for an idle engine."""
        return self.scheduler.pending_outputs()

    def has_work(self, models: frozenset[str] | None = None) -> bool:
        """Unfinished requests (of `models`, default all) or outputs not yet collected."""
        return self.scheduler.has_work(models)

    def parked(self, models: frozenset[str] | None = None) -> bool:
        """Whether a step over `models` now would surely plan nothing and change nothing, as
        the last one did (`LocalScheduler.parked`): a driver may skip it until an arrival or
        another step of this engine."""
        return self.scheduler.parked(models)

    def has_unfinished(self, models: frozenset[str] | None = None) -> bool:
        return self.scheduler.has_unfinished(models)

    def run_until_idle(self, max_steps: int = 1_000_000) -> list[RequestOutput]:
        """Step until no request is left (tests and offline runs); returns every output."""
        outputs: list[RequestOutput] = []
        for _ in range(max_steps):
            if not self.has_work():
                return outputs
            outputs.extend(self.step())
        raise RuntimeError(f"still busy after {max_steps} steps")
