"""The per-GPU local scheduler (no torch, no wall clock: every entry point takes `now`)."""

from fineserve.scheduler.local.config import BEST_EFFORT, REJECT, SchedulerConfig, ServedModel
from fineserve.scheduler.local.errors import InvalidRequestError
from fineserve.scheduler.local.policies import POLICIES, Policy, make_policy
from fineserve.scheduler.local.scheduler import LocalScheduler, SchedulerStats
from fineserve.scheduler.local.sequence import Sequence, Status

__all__ = [
    "BEST_EFFORT",
    "POLICIES",
    "REJECT",
    "InvalidRequestError",
    "LocalScheduler",
    "Policy",
    "SchedulerConfig",
    "SchedulerStats",
    "Sequence",
    "ServedModel",
    "Status",
    "make_policy",
]
