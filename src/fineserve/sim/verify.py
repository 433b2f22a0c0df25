"""Simulation-verified placement (beyond the paper), used by `fineserve_plus`.

The greedy placement policies are built on a queueing predictor
(`scheduler.placement.predict`) that is pessimistic and mis-ranks placements in overload: at
80 req/s in `paper` it rates the KV-pressure placement above FineServe's MME best fit, and the
simulator agrees, but from 150 req/s on it still prefers the KV-pressure placement while the
simulator finds the MME best fit better by 0.01-0.11 attainment. A scheme with
`placement_candidates` therefore builds one placement per candidate policy and keeps the one
with the highest SLO attainment when the simulator runs the scheme itself on a *planning
workload*: Poisson arrivals at the planned rates with lengths from the same length
distribution, drawn with a seed of its own (`PLANNING_SEED_OFFSET`), never the requests it is
then evaluated on. This is what an operator's planner can do offline: it knows the rates and
the length distribution the placement is planned for, and the simulator runs the same
scheduler and memory code as the engine.

Invariants: the chosen placement is one of the candidates; ties keep the earlier candidate
(the scheme's own policy comes first); the result depends on the planning seed, never on the
evaluated requests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

C = TypeVar("C")

PLANNING_SEED_OFFSET = 100_003


@dataclass(frozen=True)
class Verified(Generic[C]):
    """The chosen candidate (whatever the candidates are), every candidate's planning
    attainment, and the simulation spent choosing (simulated and wall seconds, counted in
    `sim_speedup` like any other run)."""

    candidate: C
    chosen: str
    scores: Mapping[str, float]
    sim_s: float
    wall_s: float


@dataclass(frozen=True)
class Trial:
    """What one planning simulation of a candidate gave."""

    attainment: float
    sim_s: float
    wall_s: float


def choose_placement(candidates: Mapping[str, C], simulate: Callable[[C], Trial]) -> Verified[C]:
    """The candidate whose planning simulation (`simulate`) has the highest attainment."""
    if not candidates:
        raise ValueError("no candidate placements to choose from")
    scores: dict[str, float] = {}
    sim_s = wall_s = 0.0
    best: str | None = None
    for name, placement in candidates.items():
        trial = simulate(placement)
        scores[name] = trial.attainment
        sim_s += trial.sim_s
        wall_s += trial.wall_s
        if best is None or trial.attainment > scores[best]:
            best = name
    assert best is not None
    return Verified(candidates[best], best, scores, sim_s, wall_s)


def refine_choice(
    chosen: Verified[C], extra: Mapping[str, C], simulate: Callable[[C], Trial]
) -> Verified[C]:
    """`chosen` held against more candidates run after it on the same planning workload: the
    best of all is kept (a tie keeps `chosen`); every trial is counted."""
    if not extra:
        return chosen
    more = choose_placement(extra, simulate)
    best = more if more.scores[more.chosen] > chosen.scores[chosen.chosen] else chosen
    return Verified(
        best.candidate,
        best.chosen,
        {**chosen.scores, **more.scores},
        chosen.sim_s + more.sim_s,
        chosen.wall_s + more.wall_s,
    )
