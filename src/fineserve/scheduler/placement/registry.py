"""Placement policies by name, and the one entry point :func:`place`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from fineserve.scheduler.placement.milp import milp_policy
from fineserve.scheduler.placement.policies import (
    fineserve_lean_policy,
    fineserve_policy,
    muxserve_policy,
    one_per_gpu_policy,
    prism_policy,
)
from fineserve.scheduler.placement.problem import PlacementProblem
from fineserve.scheduler.placement.sizing import Sizer
from fineserve.scheduler.placement.types import Placement

PolicyFn = Callable[[PlacementProblem, Sizer], Placement]

POLICIES: Mapping[str, PolicyFn] = MappingProxyType(
    {
        "fineserve": fineserve_policy,
        "fineserve_lean": fineserve_lean_policy,
        "prism": prism_policy,
        "muxserve": muxserve_policy,
        "one_per_gpu": one_per_gpu_policy,
        "milp": milp_policy,
    }
)


def place(problem: PlacementProblem, policy: str = "fineserve") -> Placement:
    """Place ``problem`` with ``policy`` (a key of :data:`POLICIES`).

    Raises ValueError for an unknown policy and :class:`InfeasibleError` (a ValueError) when
    some model cannot be served by any option even alone; models that merely do not fit beside
    the others are listed in ``Placement.unplaced``.
    """
    try:
        fn = POLICIES[policy]
    except KeyError:
        raise ValueError(
            f"unknown placement policy {policy!r}; choose one of {sorted(POLICIES)}"
        ) from None
    return fn(problem, Sizer(problem))
