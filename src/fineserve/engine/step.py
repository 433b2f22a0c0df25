"""The step contract between the local scheduler and an executor (no torch here).

The scheduler turns its state into a `StepPlan`; an `Executor` (torch or simulated) runs it and
returns a `StepResult`; the engine feeds that back with `finish_step`. One plan holds one
`ModelBatch` per model instance that has work this step.

Invariants of a plan:
- In every `ModelBatch`, the first `num_prefills` entries are prefill chunks, the rest decodes;
  entry i feeds `token_ids[i]` at positions `positions[i] .. positions[i] + len(token_ids[i])`
  and, after this step, the sequence's KV covers `positions[i] + len(token_ids[i])` tokens,
  all of them inside `page_tables[i]` (already allocated).
- `samples[i]` is true exactly when the chunk reaches the end of the sequence's known tokens:
  the executor samples one token for it and only for it.
- Page tables are the scheduler's own lists, shared to avoid copies: they are valid (and must
  not be changed by the executor) until `finish_step` for this plan returns.
- Multi-step (`num_steps = K > 1`, only when the engine is asked for it): every entry is a
  decode and the plan stands for K iterations of the same batch; in iteration j (0-based) entry
  i feeds the token sampled in iteration j - 1 (first: `token_ids[i]`) at position
  `positions[i] + j`, and `page_tables[i]` already covers `positions[i] + K` tokens. The result
  carries every sampled token (`StepResult.token_lists`); it may stop after fewer iterations
  (`StepResult.num_steps`), the pages for the rest staying with their sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from fineserve.costmodel.base import BatchShape, InstanceKey


@dataclass(slots=True)
class ModelBatch:
    """Work of one model instance in one step (columnar: index i is one sequence)."""

    model: str
    key: InstanceKey
    request_ids: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    page_tables: list[list[int]] = field(default_factory=list)
    samples: list[bool] = field(default_factory=list)
    sampling: list[Any] = field(default_factory=list)
    output_index: list[int] = field(default_factory=list)  # outputs generated before the step
    num_prefills: int = 0

    def __len__(self) -> int:
        return len(self.request_ids)

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)

    def shape(self) -> BatchShape:
        """The batch as the cost model sees it."""
        n = self.num_prefills
        prefill = tuple((len(self.token_ids[i]), self.positions[i]) for i in range(n))
        return BatchShape(prefill=prefill, decode_context=tuple(self.positions[n:]))


@dataclass(slots=True)
class StepPlan:
    """What runs in one engine step, over every co-located model instance."""

    step_id: int
    now: float
    batches: list[ModelBatch] = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # requests gone since the last plan
    preempted: list[str] = field(default_factory=list)  # preempted (by recompute) in this plan
    new_pages: dict[str, list[int]] = field(default_factory=dict)
    num_steps: int = 1  # decode iterations this plan stands for (see the module docstring)

    @property
    def empty(self) -> bool:
        return not self.batches

    @property
    def num_tokens(self) -> int:
        return sum(b.num_tokens for b in self.batches)

    @property
    def num_sequences(self) -> int:
        return sum(len(b) for b in self.batches)


@dataclass(slots=True)
class StepResult:
    """What an executor returns: one sampled token per sampling sequence, and the step time.

    `stopped` names requests the executor ended itself (a stop string or token matched); their
    token in `tokens` is the last one they produce. For a multi-step plan `num_steps` is the
    iterations run (at most the plan's), `token_lists[rid]` the token sampled in each (at
    least `num_steps` of them; the first `num_steps` count), and `tokens[rid]` is unused.

    `columns` (optional, the simulator's executor): per model, the tokens of the decodes of
    its batch in batch order (after its prefills), instead of in `tokens` (one each) or, for
    a multi-step plan, in `token_lists` (a list each). `all_tokens` / `all_token_lists` give
    them by request id.
    """

    step_id: int
    tokens: dict[str, int]
    duration_s: float
    stopped: frozenset[str] = frozenset()
    num_steps: int = 1
    token_lists: dict[str, list[int]] = field(default_factory=dict)
    columns: dict[str, list[Any]] = field(default_factory=dict)

    def all_tokens(self, plan: StepPlan) -> dict[str, int]:
        """`tokens` with the `columns` of `plan`'s batches by request id."""
        return self._with_columns(self.tokens, plan)

    def all_token_lists(self, plan: StepPlan) -> dict[str, list[int]]:
        """`token_lists` with the `columns` of `plan`'s batches by request id."""
        return self._with_columns(self.token_lists, plan)

    def _with_columns(self, by_id: dict[str, Any], plan: StepPlan) -> dict[str, Any]:
        """A copy of `by_id` plus each batch's column, keyed by its decodes' request ids."""
        out = dict(by_id)
        for batch in plan.batches:
            col = self.columns.get(batch.model)
            if col is not None:
                out.update(zip(batch.request_ids[batch.num_prefills :], col, strict=True))
        return out


REJECTED = "rejected"  # finish reason: admission turned the request away (cannot meet its TTFT)


@dataclass(slots=True)
class RequestOutput:
    """One streamed update of a request: tokens new since the last update, and whether it ended.

    `finish_reason` is one of "length", "stop", "abort", "rejected", "error" when finished.
    """

    request_id: str
    model: str
    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None
    error: str | None = None
    num_output_tokens: int = 0


@runtime_checkable
class Executor(Protocol):
    """Runs a `StepPlan`. Implemented by the torch executor and the simulator's executor."""

    def execute(self, plan: StepPlan) -> StepResult: ...
