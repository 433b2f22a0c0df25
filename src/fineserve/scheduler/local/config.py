"""Configuration of the local scheduler: the models it serves and its knobs (frozen, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from fineserve.scheduler.local.costs import InstanceKey

REJECT = "reject"
BEST_EFFORT = "best_effort"


@dataclass(frozen=True)
class ServedModel:
    """One co-located model instance: its cost-model key, context limit and SLOs (seconds).

    An SLO of None means the model has no such objective.
    """

    name: str
    key: InstanceKey
    max_model_len: int
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_model_len < 1:
            raise ValueError(f"model {self.name!r}: max_model_len must be >= 1")
        for name in ("ttft_slo_s", "tpot_slo_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"model {self.name!r}: {name} must be > 0 or None")


@dataclass(frozen=True)
class SchedulerConfig:
    """Knobs of the local scheduler.

    - `token_budget`: tokens per step over all models (one per decode plus prefill chunks).
    - `max_running`: running sequences per model at most.
    - `unmeetable`: what a policy does with a request that cannot meet its TTFT even alone:
      "reject" (ends it with finish_reason "rejected") or "best_effort" (serve it after others).
    - `admit_headroom_pages`: pages a model must still have free after admitting a new prompt,
      so running decodes can grow without preemption.
    - `growth_pages_per_running`: more pages kept free at admission per running sequence of
      the model (0: only `admit_headroom_pages`, vLLM's one-watermark rule). Each running
      decode fills a page every `tokens_per_page` steps; with too little kept free, admitting
      under overload runs the arena dry and the decodes preempt each other by recompute (in
      `paper` at 480 req/s SLO x10, 4 pages per running sequence cut fineserve_plus's
      preemptions from 1388 to 44 in 60 s and raised its attainment from 0.549 to 0.592).
    - `max_preemptions_per_grant`: victims tried for one page request before giving up.
    - `horizon_free_fraction`: a multi-step plan (`schedule(..., max_steps=K)`) reserves the
      pages of its K iterations at once; it is made only while every model of the arena keeps
      at least this fraction of the pages it holds or could get (used + available) available
      after that, so the early reservation changes no model's admission or growth.
    """

    token_budget: int = 512
    max_running: int = 256
    unmeetable: str = REJECT
    admit_headroom_pages: int = 1
    growth_pages_per_running: int = 0
    max_preemptions_per_grant: int = 4
    horizon_free_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.token_budget < 1:
            raise ValueError("token_budget must be >= 1")
        if self.max_running < 1:
            raise ValueError("max_running must be >= 1")
        if self.admit_headroom_pages < 0 or self.growth_pages_per_running < 0:
            raise ValueError("admit_headroom_pages and growth_pages_per_running must be >= 0")
        if self.unmeetable not in (REJECT, BEST_EFFORT):
            raise ValueError(f"unmeetable must be {REJECT!r} or {BEST_EFFORT!r}")
