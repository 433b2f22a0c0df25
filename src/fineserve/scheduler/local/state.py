"""The local scheduler's state: queues of sequences, submission, abort, and step results.

`SchedulerState` owns every `Sequence` and applies executed steps (`update`); `LocalScheduler`
(scheduler.py) adds the planning on top.

Invariants:
- Every sequence is in exactly one of `waiting` (no pages), `prefilling` or `decoding`
  (holding pages), or it has finished, holds no pages and is forgotten.
- While a plan is in flight its sequences' pages are not freed (an abort of one of them takes
  effect in `update`).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence as Seqs
from dataclasses import dataclass, field

from fineserve.engine.step import ModelBatch, RequestOutput, StepPlan, StepResult
from fineserve.memory.allocator import KVAllocator
from fineserve.scheduler.local.config import SchedulerConfig, ServedModel
from fineserve.scheduler.local.errors import InvalidRequestError
from fineserve.scheduler.local.memory import PageBroker
from fineserve.scheduler.local.sequence import Sequence, Status


@dataclass
class SchedulerStats:
    """Counters of one scheduler (per instance)."""

    steps: int = 0
    preemptions: int = 0
    rejected: int = 0
    aborted: int = 0
    finished: int = 0
    preemptions_by_model: dict[str, int] = field(default_factory=dict)


class SchedulerState:
    """Sequences and their queues (see the module docstring)."""

    def __init__(
        self,
        models: Seqs[ServedModel],
        allocator: KVAllocator,
        config: SchedulerConfig | None = None,
    ) -> None:
        self.config = config or SchedulerConfig()
        self.models: dict[str, ServedModel] = {m.name: m for m in models}
        missing = [m for m in self.models if m not in allocator.model_names]
        if missing:
            raise ValueError(f"models {missing} have no KV memory in the allocator")
        self.pages = PageBroker(allocator, self.models, self.config.max_preemptions_per_grant)
        self.seqs: dict[str, Sequence] = {}
        self.waiting: dict[str, Sequence] = {}
        self.prefilling: dict[str, Sequence] = {}
        self.decoding: dict[str, dict[str, Sequence]] = {m: {} for m in self.models}
        self.stats = SchedulerStats()
        self._in_flight: set[str] = set()
        self._decode_seqs: dict[str, list[Sequence]] = {}  # decodes of the plan in flight
        self._released: list[str] = []
        self._outputs: list[RequestOutput] = []

    # -- submission ------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        model: str,
        prompt_token_ids: Seqs[int],
        max_tokens: int,
        arrival_s: float,
        *,
        sampling: object = None,
        stop_token_ids: frozenset[int] = frozenset(),
    ) -> Sequence:
        """Queue a request, or raise `InvalidRequestError` leaving the scheduler unchanged."""
        served = self.models.get(model)
        if served is None:
            raise InvalidRequestError(f"unknown model {model!r}; serving {sorted(self.models)}")
        if request_id in self.seqs:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        if not prompt_token_ids:
            raise InvalidRequestError("the prompt is empty")
        if len(prompt_token_ids) >= served.max_model_len:
            raise InvalidRequestError(
                f"prompt of {len(prompt_token_ids)} tokens does not fit model {model!r}'s "
                f"context of {served.max_model_len} tokens (room is needed for one output token)"
            )
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        seq = Sequence(
            request_id,
            model,
            list(prompt_token_ids),
            max_tokens,
            arrival_s,
            served.ttft_slo_s,
            sampling,
            stop_token_ids,
        )
        self.seqs[request_id] = seq
        self.waiting[request_id] = seq
        return seq

    def abort(self, request_id: str) -> bool:
        """End a request now; its pages are freed at once (or, while it is in the step being
        executed, when that step finishes). False if the request is unknown or finished."""
        seq = self.seqs.get(request_id)
        if seq is None or seq.status is Status.FINISHED or seq.finish_reason is not None:
            return False
        self.stats.aborted += 1
        if request_id in self._in_flight:
            seq.finish_reason = "abort"
        else:
            self._finish(seq, "abort")
        return True

    # -- results -----------------------------------------------------------------------------
    def update(self, plan: StepPlan, result: StepResult, now: float) -> list[RequestOutput]:
        """Apply a step's result at time `now`; returns every output since the last update."""
        if result.step_id != plan.step_id:
            raise ValueError(f"result of step {result.step_id} given for step {plan.step_id}")
        tokens, stopped, out = result.tokens, result.stopped, self._outputs
        for batch in plan.batches:
            n, model = batch.num_prefills, batch.model
            for i in range(n):
                self._apply(batch, i, batch.request_ids[i], result, now)
            max_len = self.models[model].max_model_len
            for seq in self._decode_seqs.get(model, ()):  # hot path: one token fed, one sampled
                rid = seq.request_id
                if seq.finish_reason is not None or rid in stopped:
                    self._apply(batch, batch.request_ids.index(rid), rid, result, now)
                    continue
                token = tokens[rid]
                seq.num_computed += 1
                seq_tokens = seq.tokens
                seq_tokens.append(token)
                seq.last_token_s = now
                n_out = len(seq_tokens) - seq.num_prompt
                if (
                    n_out >= seq.max_tokens
                    or token in seq.stop_token_ids
                    or len(seq_tokens) >= max_len
                ):
                    self._apply_end(seq, token)
                else:
                    out.append(RequestOutput(rid, model, [token], False, None, None, n_out))
        self._in_flight = set()
        outputs, self._outputs = self._outputs, []
        return outputs

    def _apply(self, batch: ModelBatch, i: int, rid: str, result: StepResult, now: float) -> None:
        seq = self.seqs[rid]
        if seq.finish_reason == "abort":  # aborted while the step ran
            self._finish(seq, "abort")
            return
        seq.num_computed += len(batch.token_ids[i])
        if not batch.samples[i]:
            return
        token = result.tokens[rid]
        seq.tokens.append(token)
        if seq.first_token_s is None:
            seq.first_token_s = now
        seq.last_token_s = now
        if self.prefilling.pop(rid, None) is not None:
            self.decoding[seq.model][rid] = seq
        if rid in result.stopped:
            self._finish(seq, "stop", token=token)
        else:
            self._apply_end(seq, token)

    def _apply_end(self, seq: Sequence, token: int) -> None:
        """Emit `token` for `seq`, ending it on a stop token, max_tokens or the context limit."""
        if token in seq.stop_token_ids:
            self._finish(seq, "stop", token=token)
        elif seq.num_output >= seq.max_tokens or len(seq.tokens) >= (
            self.models[seq.model].max_model_len
        ):
            self._finish(seq, "length", token=token)
        else:
            self._outputs.append(
                RequestOutput(seq.request_id, seq.model, [token], num_output_tokens=seq.num_output)
            )

    def _finish(
        self, seq: Sequence, reason: str, error: str | None = None, token: int | None = None
    ) -> None:
        """End `seq`: free all its pages, drop it from every queue, emit its last output."""
        self.pages.release(seq)
        rid = seq.request_id
        self.waiting.pop(rid, None)
        self.prefilling.pop(rid, None)
        self.decoding[seq.model].pop(rid, None)
        del self.seqs[rid]
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        if reason not in ("abort", "rejected"):
            self.stats.finished += 1
        self._released.append(rid)
        self._outputs.append(
            RequestOutput(
                rid,
                seq.model,
                [] if token is None else [token],
                finished=True,
                finish_reason=reason,
                error=error,
                num_output_tokens=seq.num_output,
            )
        )

    # -- queries -----------------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self.seqs) or bool(self._outputs)

    def num_running(self, model: str | None = None) -> int:
        if model is None:
            return len(self.prefilling) + sum(len(d) for d in self.decoding.values())
        return len(self.decoding[model]) + sum(
            1 for s in self.prefilling.values() if s.model == model
        )

    def pending_outputs(self) -> list[RequestOutput]:
        """Outputs produced outside a step (aborts, rejections); clears them."""
        outputs, self._outputs = self._outputs, []
        return outputs

    def used_pages(self) -> Mapping[str, int]:
        return {m: self.pages.allocator.used_pages(m) for m in self.models}
