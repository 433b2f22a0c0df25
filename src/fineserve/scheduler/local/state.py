"""The local scheduler's state: queues of sequences, submission, abort, and step results.

`SchedulerState` owns every `Sequence` and applies executed steps (`update`); `LocalScheduler`
(scheduler.py) adds the planning on top.

Invariants:
- Every sequence is in exactly one of `waiting` (no pages), `prefilling` or `decoding`
  (holding pages), or it has finished, holds no pages and is forgotten.
- `waiting_of[m]` is `waiting` filtered to model m, in the same order (every change of
  `waiting` is made to both: `_queue` and `_unqueue`).
- While a plan is in flight its sequences' pages are not freed (an abort of one of them takes
  effect in `update`), and none of them is preempted.
- Several plans may be in flight at once (step lanes), each over a disjoint set of models:
  `_lanes` maps a plan's step id to its `Lane`, `_busy` each model with a plan in flight to it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from collections.abc import Sequence as Seqs
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from typing import ClassVar

from fineserve.engine.step import REJECTED, ModelBatch, RequestOutput, StepPlan, StepResult
from fineserve.memory.allocator import KVAllocator
from fineserve.scheduler.local.config import SchedulerConfig, ServedModel
from fineserve.scheduler.local.errors import InvalidRequestError
from fineserve.scheduler.local.forecast import ArrivalWindow
from fineserve.scheduler.local.memory import PageBroker
from fineserve.scheduler.local.sequence import Sequence, Stamp, Status


class DecodeCols:
    """One model's running decodes as batch columns, kept between steps (hot path).

    Index i is `seqs[i]`, in the order of `SchedulerState.decoding[model]`. `update` advances
    `positions` of the entries it ran; any change of membership (a decode starting, finishing
    or preempted) only sets `dirty`, and the next plan rebuilds the columns from
    `decoding[model]` (so indices stay valid while a step is applied). `page_tables[i]` and
    `tokens[i]` are `seqs[i].pages` and `seqs[i].tokens` themselves (both grow in place).
    Every list but `positions` is replaced, never changed in place, so plans may share them.

    A rebuild *tracks* every sequence (`Sequence.track_decode`: `num_computed` follows its
    tokens). `plain`: no sequence streams or has stop tokens, so `update` feeds tokens
    column-wise; `left` is a lower bound on the tokens any of them may still sample before it
    ends (an end check runs only when it reaches 0); `stamp` is the `Stamp` the sequences'
    `last_token_s` read once `stamped` (a step ran every one of them at `stamp.t`).
    `edges[r]` (when built for `tokens_per_page` t) lists the indices whose position was
    `r` mod t at the rebuild; `shift` counts the tokens every decode got since, so the decodes
    at a page boundary now are `edges[-shift % t]`. A step running only some decodes drops
    `edges` (None: scan the positions) until the next rebuild.
    """

    __slots__ = (
        "dirty",
        "edges",
        "left",
        "num_prompt",
        "page_tables",
        "plain",
        "positions",
        "request_ids",
        "sampling",
        "seqs",
        "shift",
        "stamp",
        "stamped",
        "tokens",
    )

    def __init__(self) -> None:
        self.seqs: list[Sequence] = []
        self.request_ids: list[str] = []
        self.tokens: list[list[int]] = []
        self.positions: list[int] = []
        self.num_prompt: list[int] = []
        self.page_tables: list[list[int]] = []
        self.sampling: list[object] = []
        self.dirty = False
        self.plain = True
        self.left = 0
        self.stamp = Stamp()
        self.stamped = False
        self.edges: list[list[int]] | None = None
        self.shift = 0

    def rebuild(self, decoding: dict[str, Sequence], tokens_per_page: int = 0) -> None:
        """The columns of `decoding`, every sequence tracked (as `Sequence.track_decode`
        does: a tracked decode's position is `len(tokens) - 1`). Plain comprehensions and
        loops: in CPython 3.11 they beat `map` over attribute getters here."""
        self.seqs = seqs = list(decoding.values())
        self.request_ids = list(decoding)
        for s in seqs:
            s._computed = -1  # `track_decode`, without a call per sequence
        self.tokens = tokens = [s.tokens for s in seqs]
        self.positions = positions = [len(t) - 1 for t in tokens]
        self.num_prompt = [s.num_prompt for s in seqs]
        self.page_tables = [s.pages for s in seqs]
        self.sampling = [s.sampling for s in seqs]
        self.plain = not any([s.stream or s.stop_token_ids for s in seqs])
        self.left = self.tokens_left()
        self.stamp = Stamp()  # the old one is never changed again: its readers keep its time
        self.stamped = False
        self.dirty = False
        self.shift = 0
        self.edges = None
        if tokens_per_page:
            self.edges = edges = [[] for _ in range(tokens_per_page)]
            for i, p in enumerate(positions):
                edges[p % tokens_per_page].append(i)

    def tokens_left(self) -> int:
        """Fewest tokens any sequence may still sample before reaching its end length."""
        return min([s.end_len - len(s.tokens) for s in self.seqs], default=0)


def _firsts(lists: list[list[int]], n: int) -> list[list[int]]:
    """`lists` with each list cut to its first n tokens (as is when they have n)."""
    if all([len(v) == n for v in lists]):
        return lists
    return [v[:n] for v in lists]


def _spread(result: StepResult, model: str, ids: list[str], multi: bool) -> None:
    """Move `result.columns[model]` (the tokens of `ids`, in order) into `result.tokens`, or
    for a multi-step result into `result.token_lists` (for the per-sequence paths)."""
    col = result.columns.pop(model)
    if multi:
        result.token_lists.update(zip(ids, col, strict=True))
    else:
        result.tokens.update(zip(ids, col, strict=True))


_tokens = attrgetter("tokens")


class Lane:
    """A plan in flight: its models, the requests it runs, and its decodes by model.

    `scheduled` holds the plan's prefills and the decodes of models that run only part of
    their decodes; a model in `all_decodes` runs every one of its decodes (they are exactly
    `decoding[model]` while the plan is in flight), so they are not copied into `scheduled`.
    `decode_idx[model]` is None when every decode runs in column order, else the column indices
    run, in plan order."""

    __slots__ = (
        "aborted",
        "all_decodes",
        "decode_idx",
        "decode_seqs",
        "models",
        "reserved",
        "scheduled",
        "step_id",
    )

    def __init__(self, step_id: int, models: frozenset[str]) -> None:
        self.step_id = step_id
        self.models = models
        self.scheduled: set[str] = set()
        self.all_decodes: set[str] = set()
        self.decode_seqs: dict[str, list[Sequence]] = {}
        self.decode_idx: dict[str, list[int] | None] = {}
        self.aborted: set[str] = set()  # aborted while in flight: finished by `update`
        # pages were taken early for its iterations (`_reserve_horizon`): only then may a
        # decode hold more pages than its KV needs when the plan (or chain) stops early
        self.reserved = False


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

    #: exact shortcut (tests turn it off): a plan that took no page early (`Lane.reserved`)
    #: is not trimmed when it stops early, as no decode holds a page its KV does not need
    trim_skips: ClassVar[bool] = True

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
        # `waiting` by model, in `waiting`'s order (see the module docstring)
        self.waiting_of: dict[str, dict[str, Sequence]] = {m: {} for m in self.models}
        # bumped on every change of `waiting` (a request queued, started, preempted, ended)
        self.waiting_version = 0
        # bumped on every change a plan may depend on: a request queued or aborted, a plan
        # that runs, takes pages or preempts, a result applied (see `LocalScheduler.parked`)
        self.state_version = 0
        self.prefilling: dict[str, Sequence] = {}
        self.decoding: dict[str, dict[str, Sequence]] = {m: {} for m in self.models}
        self._cols: dict[str, DecodeCols] = {m: DecodeCols() for m in self.models}
        self.stats = SchedulerStats()
        self._lanes: dict[int, Lane] = {}  # plans in flight by step id
        self._busy: dict[str, Lane] = {}  # model -> the plan in flight over it
        self._released: dict[str, list[str]] = {m: [] for m in self.models}
        self._outputs: list[RequestOutput] = []
        self._unfinished: dict[str, int] = {m: 0 for m in self.models}
        # each model's recent submissions (`forecast`: what it is expected to send next)
        self.arrivals: dict[str, ArrivalWindow] = {m: ArrivalWindow() for m in self.models}

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
        stream: bool = True,
    ) -> Sequence:
        """Queue a request, or raise `InvalidRequestError` leaving the scheduler unchanged.

        `stream`: one output per new token (default); False: an output with the first token,
        then only the final one, carrying every token not yet delivered (cheaper per step)."""
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
            prompt_token_ids,  # `Sequence` copies it
            max_tokens,
            arrival_s,
            served.ttft_slo_s,
            sampling,
            stop_token_ids,
            stream,
            served.max_model_len,
        )
        self.seqs[request_id] = seq
        self._queue(seq)
        self.state_version += 1
        self._unfinished[model] += 1
        self.arrivals[model].note(arrival_s, seq.num_prompt)
        return seq

    def abort(self, request_id: str) -> bool:
        """End a request now; its pages are freed at once (or, while it is in the step being
        executed, when that step finishes). False if the request is unknown or finished."""
        seq = self.seqs.get(request_id)
        if seq is None or seq.status is Status.FINISHED or seq.finish_reason is not None:
            return False
        self.stats.aborted += 1
        self.state_version += 1
        lane = self._busy.get(seq.model)
        if lane is not None and self._runs(lane, seq):
            seq.finish_reason = "abort"
            lane.aborted.add(request_id)
        else:
            self._finish(seq, "abort")
        return True

    # -- results -----------------------------------------------------------------------------
    def update(self, plan: StepPlan, result: StepResult, now: float) -> list[RequestOutput]:
        """Apply a step's result at time `now`; returns every output since the last update."""
        if result.step_id != plan.step_id:
            raise ValueError(f"result of step {result.step_id} given for step {plan.step_id}")
        lane = self._lanes.pop(plan.step_id, None)
        if lane is None:
            raise ValueError(f"step {plan.step_id} is not in flight")
        for m in lane.models:
            del self._busy[m]
        if plan.batches or plan.new_pages or plan.preempted:
            self.state_version += 1  # an empty plan changed nothing (its lane is idle again)
        steps = 1
        if plan.num_steps > 1:
            steps = result.num_steps
            if result.stopped or not 1 <= steps <= plan.num_steps:
                raise ValueError(f"result of {steps} iterations (stopped: {set(result.stopped)})"
                                 f" for a plan of {plan.num_steps}")  # fmt: skip
        decode_seqs, all_cols = lane.decode_seqs, self._cols
        special = result.stopped | lane.aborted if lane.aborted else result.stopped
        for batch in plan.batches:
            n, model = batch.num_prefills, batch.model
            for i in range(n):
                self._apply(batch, i, batch.request_ids[i], result, now)
            seqs = decode_seqs.get(model)
            if not seqs:
                continue
            ids = batch.request_ids[n:] if n else batch.request_ids  # the decodes, as `seqs`
            cols, idx = all_cols[model], lane.decode_idx[model]
            col = result.columns.get(model) if result.columns else None
            if special and not special.isdisjoint(ids):
                cols.stamped = False
                if col is not None:
                    _spread(result, model, ids, plan.num_steps > 1)
                self._apply_decodes(batch, seqs, special, result, now, plan.num_steps > 1)
            elif plan.num_steps > 1:  # only plain columns, every decode in column order
                if col is None:
                    col = list(map(result.token_lists.__getitem__, ids))
                self._feed_plain(cols, idx, seqs, _firsts(col, steps), now, steps)
                if steps < plan.num_steps and self._may_hold_surplus(lane):
                    self._trim(batch, seqs, steps)
            elif cols.plain:
                if col is None:
                    col = list(map(result.tokens.__getitem__, ids))
                self._feed_plain(cols, idx, seqs, col, now)
            else:
                cols.stamped = False
                if col is not None:
                    _spread(result, model, ids, False)
                self._feed(model, seqs, ids, result.tokens, now)
            if not cols.dirty:  # else the next plan rebuilds the columns anyway
                if idx is None:  # a new list: the plan keeps the old one
                    cols.positions = list(map(steps.__add__, cols.positions))
                    cols.shift += steps
                else:
                    cols.edges = None
                    positions = cols.positions
                    for i in idx:
                        positions[i] += 1
        outputs, self._outputs = self._outputs, []
        return outputs

    def _feed_plain(
        self,
        cols: DecodeCols,
        idx: list[int] | None,
        seqs: list[Sequence],
        new: list[int] | list[list[int]],
        now: float,
        steps: int = 0,
    ) -> None:
        """Hot path of `update`: the sampled token (or, for a multi-step plan, the list of
        them) of each of `seqs` (tracked decodes of a plain column, run in column order when
        `idx` is None), in `new` in the order of `seqs`, fed column-wise; only when
        `cols.left` runs out are the sequences checked for their end. `steps`: 0 for one
        token each, else the lists' length."""
        if steps:  # multi-step: idx is None
            deque(map(list.extend, cols.tokens, new), 0)
            new = [t[-1] for t in new]
            stamp = cols.stamp
            stamp.t = now
            if not cols.stamped:
                deque(map(setattr, seqs, repeat("_last"), repeat(stamp)), 0)
                cols.stamped = True
        elif idx is None:
            deque(map(list.append, cols.tokens, new), 0)
            stamp = cols.stamp
            stamp.t = now
            if not cols.stamped:
                deque(map(setattr, seqs, repeat("_last"), repeat(stamp)), 0)
                cols.stamped = True
        else:
            deque(map(list.append, map(_tokens, seqs), new), 0)
            deque(map(setattr, seqs, repeat("_last"), repeat(now)), 0)
            cols.stamped = False  # the others still read the stamp: it must not change
        cols.left -= steps or 1
        if cols.left > 0:
            return
        for seq, token in zip(seqs, new, strict=True):
            if len(seq.tokens) >= seq.end_len:
                self._finish(seq, "length", token=token)
        if not cols.dirty:
            cols.left = cols.tokens_left()

    def _may_hold_surplus(self, lane: Lane) -> bool:
        """Whether a decode of `lane`'s plan may hold pages its KV does not need when the plan
        stops early, so `_trim` must run: only if the plan took pages early (`trim_skips`
        off: always)."""
        return lane.reserved or not self.trim_skips

    def _trim(self, batch: ModelBatch, seqs: list[Sequence], steps: int) -> None:
        """A multi-step plan stopped after `steps` iterations: give back the pages reserved
        for the iterations not run (each decode keeps the pages its KV needs), as if the
        plan had been made for `steps` iterations.

        A decode at position p keeps ceil((p + steps) / t) pages, so it has a surplus exactly
        when its pages hold at least t + steps tokens beyond p: checked for all first, in one
        comprehension (the common case has none)."""
        t = self.pages.tokens_per_page[batch.model]
        beyond = [len(s.pages) * t - p for s, p in zip(seqs, batch.positions, strict=True)]
        if max(beyond, default=0) < t + steps:
            return
        surplus: list[int] = []
        for seq, p in zip(seqs, batch.positions, strict=True):
            pages, keep = seq.pages, -(-(p + steps) // t)
            if len(pages) > keep and seq.status is Status.RUNNING:
                surplus += pages[keep:]
                del pages[keep:]
        if surplus:
            self.pages.allocator.free(batch.model, surplus)

    def _feed(
        self,
        model: str,
        seqs: list[Sequence],
        ids: list[str],
        tokens: Mapping[str, int],
        now: float,
    ) -> None:
        """`update`'s decode loop for columns with streaming or stop tokens."""
        out = self._outputs
        for seq, token in zip(seqs, map(tokens.__getitem__, ids), strict=True):
            seq_tokens = seq.tokens
            seq_tokens.append(token)  # a tracked decode: `num_computed` follows
            seq.last_token_s = now
            if len(seq_tokens) >= seq.end_len or token in seq.stop_token_ids:
                self._apply_end(seq, token)
            elif seq.stream:
                n_out = len(seq_tokens) - seq.num_prompt
                rid = seq.request_id
                out.append(RequestOutput(rid, model, [token], False, None, None, n_out))

    def _apply_decodes(
        self,
        batch: ModelBatch,
        seqs: list[Sequence],
        special: frozenset[str] | set[str],
        result: StepResult,
        now: float,
        multi: bool = False,
    ) -> None:
        """`update`'s decode loop when some of `seqs` were aborted meanwhile or stopped by the
        executor (those go through `_apply`); `multi`: a multi-step plan's result."""
        for seq in seqs:
            rid = seq.request_id
            if rid in special:
                self._apply(batch, batch.request_ids.index(rid), rid, result, now)
                continue
            if multi:
                new = result.token_lists[rid][: result.num_steps]
                seq.tokens.extend(new)
                token = new[-1]
            else:
                token = result.tokens[rid]
                seq.tokens.append(token)  # a tracked decode: `num_computed` follows
            seq.last_token_s = now
            self._apply_end(seq, token)

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
            self._cols[seq.model].dirty = True
        if rid in result.stopped:
            self._finish(seq, "stop", token=token)
        else:
            self._apply_end(seq, token)

    def _apply_end(self, seq: Sequence, token: int) -> None:
        """Emit `token` for `seq`, ending it on a stop token, max_tokens or the context limit."""
        if token in seq.stop_token_ids:
            self._finish(seq, "stop", token=token)
        elif len(seq.tokens) >= seq.end_len:
            self._finish(seq, "length", token=token)
        elif seq.stream:
            self._outputs.append(
                RequestOutput(seq.request_id, seq.model, [token], num_output_tokens=seq.num_output)
            )
        elif not seq.delivered:  # stream=False: the first token only (its time is the TTFT)
            n = seq.num_output
            ids = seq.tokens[seq.num_prompt :]
            self._outputs.append(RequestOutput(seq.request_id, seq.model, ids, num_output_tokens=n))
            seq.delivered = n

    def _finish(
        self, seq: Sequence, reason: str, error: str | None = None, token: int | None = None
    ) -> None:
        """End `seq`: free all its pages, drop it from every queue, emit its last output."""
        self.pages.release(seq)
        rid = seq.request_id
        self._unqueue(seq)
        self.prefilling.pop(rid, None)
        if self.decoding[seq.model].pop(rid, None) is not None:
            self._cols[seq.model].dirty = True
        del self.seqs[rid]
        self._unfinished[seq.model] -= 1
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        if reason not in ("abort", REJECTED):
            self.stats.finished += 1
        self._released[seq.model].append(rid)
        if seq.stream:
            ids = [] if token is None else [token]
        else:  # every token not delivered yet
            ids = seq.tokens[seq.num_prompt + seq.delivered :]
        self._outputs.append(
            RequestOutput(
                rid,
                seq.model,
                ids,
                finished=True,
                finish_reason=reason,
                error=error,
                num_output_tokens=seq.num_output,
            )
        )

    def _queue(self, seq: Sequence) -> None:
        """Put `seq` at the end of `waiting` (and of `waiting_of[seq.model]`)."""
        rid = seq.request_id
        self.waiting[rid] = seq
        self.waiting_of[seq.model][rid] = seq
        self.waiting_version += 1

    def _unqueue(self, seq: Sequence) -> None:
        """Take `seq` out of `waiting` (and of `waiting_of[seq.model]`) if it is there."""
        rid = seq.request_id
        self.waiting.pop(rid, None)
        self.waiting_of[seq.model].pop(rid, None)
        self.waiting_version += 1

    # -- queries -----------------------------------------------------------------------------
    def in_flight(self, seq: Sequence) -> bool:
        """Whether `seq` is in a plan being executed (its pages are read: never freed now)."""
        lane = self._busy.get(seq.model)
        return lane is not None and self._runs(lane, seq)

    def _runs(self, lane: Lane, seq: Sequence) -> bool:
        """Whether `seq` is in `lane`'s plan (in flight, or being built)."""
        rid = seq.request_id
        if rid in lane.scheduled:
            return True
        model = seq.model
        return model in lane.all_decodes and rid in self.decoding[model]

    def busy_models(self) -> frozenset[str]:
        """Models with a plan in flight."""
        return frozenset(self._busy)

    def has_work(self, models: frozenset[str] | None = None) -> bool:
        """Unfinished requests (of `models`, default all) or outputs not yet collected."""
        if self._outputs:
            return True
        if models is None:
            return bool(self.seqs)
        return any(self._unfinished[m] for m in models)

    def has_unfinished(self, models: frozenset[str] | None = None) -> bool:
        """Unfinished requests (of `models`, default all)."""
        if models is None:
            return bool(self.seqs)
        return any(self._unfinished[m] for m in models)

    def num_running(self, model: str | None = None) -> int:
        if model is None:
            return len(self.prefilling) + sum(len(d) for d in self.decoding.values())
        return len(self.decoding[model]) + sum(
            1 for s in self.prefilling.values() if s.model == model
        )

    def has_pending_outputs(self) -> bool:
        """Outputs produced outside a step (aborts, rejections) not collected yet."""
        return bool(self._outputs)

    def pending_outputs(self) -> list[RequestOutput]:
        """Outputs produced outside a step (aborts, rejections); clears them."""
        outputs, self._outputs = self._outputs, []
        return outputs

    def used_pages(self) -> Mapping[str, int]:
        return {m: self.pages.allocator.used_pages(m) for m in self.models}
