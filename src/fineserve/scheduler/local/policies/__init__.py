"""Local scheduling policies, by name: `fcfs`, `saab` (the paper), `prism`, `slack` (ours) and
`slack_plus` (`slack` with every option the simulator's `fineserve_plus` scheme turns on:
TPOT-aware budget, fewest-misses and look-ahead admission)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType

from fineserve.scheduler.local.policies.base import (
    Admission,
    Policy,
    PolicyContext,
    split_unmeetable,
    tpot_decode_limit,
)
from fineserve.scheduler.local.policies.fcfs import FCFSPolicy
from fineserve.scheduler.local.policies.prism import PrismPolicy
from fineserve.scheduler.local.policies.saab import SAABPolicy
from fineserve.scheduler.local.policies.slack import SlackPolicy

POLICIES: Mapping[str, Callable[[], Policy]] = MappingProxyType(
    {
        "fcfs": FCFSPolicy,
        "saab": SAABPolicy,
        "prism": PrismPolicy,
        "slack": SlackPolicy,
        "slack_plus": partial(SlackPolicy, tpot_budget=True, fewest_misses=True, lookahead=True),
    }
)


def make_policy(name: str) -> Policy:
    """The policy registered as `name`; ValueError naming the choices otherwise."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None


__all__ = [
    "POLICIES",
    "Admission",
    "FCFSPolicy",
    "Policy",
    "PolicyContext",
    "PrismPolicy",
    "SAABPolicy",
    "SlackPolicy",
    "make_policy",
    "split_unmeetable",
    "tpot_decode_limit",
]
