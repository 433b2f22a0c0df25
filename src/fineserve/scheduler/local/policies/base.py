"""What a local scheduling policy decides, and the context it decides in.

A policy answers two questions each step; the scheduler core does the rest (chunking within
the token budget, pages, preemption):

- `admit(waiting, ctx)`: in which order the waiting prefills (new, partly prefilled, or
  preempted) get the step's token budget, and which requests are rejected outright.
- `decode_limit(model, contexts, ctx)`: how many of a model's running decodes run this step.

Policies are stateless between steps (all state lives in the sequences), so one policy object
may serve many engines.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from collections.abc import Sequence as Seqs
from dataclasses import dataclass, field
from typing import ClassVar

from fineserve.scheduler.local.config import REJECT, ServedModel
from fineserve.scheduler.local.forecast import Forecast
from fineserve.scheduler.local.predict import Predictor
from fineserve.scheduler.local.sequence import Sequence


@dataclass
class PolicyContext:
    """The step being planned: time, budget, predictions, and decodes already in the step."""

    now: float
    token_budget: int
    predictor: Predictor
    models: Mapping[str, ServedModel]
    unmeetable: str = REJECT
    decodes: dict[str, list[int]] = field(default_factory=dict)  # model -> decode contexts
    # model -> contexts of every running decode, in the order `decode_limit` gets them
    decode_contexts: dict[str, list[int]] = field(default_factory=dict)
    can_start: Callable[[Sequence], bool] = lambda seq: True  # memory and running limits
    # predicted time multiplier of this lane's prefill steps from the engine's other lanes in
    # flight beside it (`LocalScheduler(interference=...)`; 1.0 without an interference model)
    slowdown: float = 1.0
    # per model of the lane, its expected arrivals (only for a policy with `uses_forecast`)
    forecast: Mapping[str, Forecast] = field(default_factory=dict)


@dataclass
class Admission:
    """`order`: prefills in the order they get tokens; `rejected`: requests to end now;
    `token_budget`: a smaller prefill budget for this step, if the policy wants one."""

    order: list[Sequence]
    rejected: list[Sequence] = field(default_factory=list)
    token_budget: int | None = None


class Policy(ABC):
    """A local scheduling policy (see the module docstring)."""

    name: ClassVar[str] = "abstract"
    #: `admit` neither rejects nor changes a sequence, and its order does not depend on the
    #: time (only on the candidates): a step whose prefills were all refused admission is
    #: planned alike at a later time while nothing else changes
    static_admission: ClassVar[bool] = False
    #: `admit` reads `PolicyContext.forecast` (the scheduler fills it only then)
    uses_forecast: bool = False

    @abstractmethod
    def admit(self, waiting: Seqs[Sequence], ctx: PolicyContext) -> Admission: ...

    def decode_limit(self, model: ServedModel, running: Seqs[Sequence], ctx: PolicyContext) -> int:
        """Default: every running decode runs."""
        return len(running)


def split_unmeetable(
    candidates: Seqs[Sequence], ctx: PolicyContext
) -> tuple[list[Sequence], list[Sequence]]:
    """Mark fresh requests that would miss their TTFT deadline even alone.

    Returns (kept, rejected). With `unmeetable == "best_effort"` nothing is rejected: the
    unmeetable ones are flagged `best_effort` (served after every other request) and kept.
    """
    kept: list[Sequence] = []
    rejected: list[Sequence] = []
    for seq in candidates:
        if (
            seq.fresh
            and not seq.best_effort
            and ctx.now + ctx.predictor.prefill_alone(seq) > seq.deadline_s
        ):
            if ctx.unmeetable == REJECT:
                rejected.append(seq)
                continue
            seq.best_effort = True
        kept.append(seq)
    return kept, rejected


def tpot_decode_limit(model: ServedModel, running: Seqs[Sequence], ctx: PolicyContext) -> int:
    """Decodes of `model` such that its predicted decode step stays within its TPOT SLO."""
    if model.tpot_slo_s is None:
        return len(running)
    contexts = ctx.decode_contexts.get(model.name)
    if contexts is None or len(contexts) != len(running):
        contexts = [s.num_computed for s in running]
    return ctx.predictor.max_decodes_within(model.name, contexts, model.tpot_slo_s)
