"""Stepped runs: a solo lane kept to single steps only by other lanes of its group idle with
work runs a multi-step plan as those single steps would (one activity per iteration, the
engine not called between them); records are bit-equal to the plain path's (the same events
and floats), and so are steps and preemptions."""

from __future__ import annotations

import pytest
from tests.sim.test_sim_horizon import facts
from tests.sim.test_sim_parked import placement_for, requests, small_gpu, small_models

from fineserve.costmodel.table import TableCostModel
from fineserve.sim.loop import ClusterSim, SimLane
from fineserve.sim.schemes import get_scheme

Outcome = tuple[dict[str, tuple[object, ...]], tuple[int, int, int]]


def run(
    scheme: str,
    kind: str,
    memory_mib: float,
    seed: int,
    rate: float,
    step_runs: bool,
    table: TableCostModel,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Outcome, int]:
    """(facts per request and (steps, preemptions, events); iterations started without the
    engine, between two iterations of a stepped run)."""
    monkeypatch.setattr(ClusterSim, "step_runs", step_runs)
    stepped = {"n": 0}
    next_iteration = ClusterSim._next_iteration

    def counted(self: ClusterSim, lane: SimLane) -> None:
        stepped["n"] += lane.stepped
        next_iteration(self, lane)

    monkeypatch.setattr(ClusterSim, "_next_iteration", counted)
    gpu = small_gpu(memory_mib)
    placement = placement_for(kind)
    models = small_models(placement)
    spec = get_scheme(scheme)
    sim = ClusterSim(models, placement, spec, table, table.interference, gpu)
    records = sim.run(requests(150, seed, rate, len(models))).records
    outcome = {rid: facts(rec) for rid, rec in records.items()}
    counts = (sim.stats.steps, sim.stats.preemptions, sim.stats.events)
    return (outcome, counts), stepped["n"]


@pytest.mark.parametrize(
    ("scheme", "kind", "memory_mib", "seed", "rate"),
    [
        ("muxserve", "trio", 3.5, 3, 200.0),
        ("muxserve", "trio", 5.0, 8, 200.0),
        ("muxserve", "trio", 64.0, 5, 20.0),
        ("muxserve", "pair", 2.5, 4, 100.0),
        ("static", "trio", 4.0, 3, 200.0),
        ("static", "pair", 1.5, 3, 200.0),
        ("prism", "trio", 24.0, 6, 100.0),
        ("fineserve", "trio", 8.0, 7, 100.0),
    ],
)
def test_stepped_runs_give_the_records_of_single_steps(
    scheme: str,
    kind: str,
    memory_mib: float,
    seed: int,
    rate: float,
    table: TableCostModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Engines on overlapping GPU sets (one stuck or idle with work keeps the others to single
    steps): every record bit-equal, the same steps, preemptions and events."""
    args = (scheme, kind, memory_mib, seed, rate)
    plain, plain_stepped = run(*args, False, table, monkeypatch)
    fast, _ = run(*args, True, table, monkeypatch)
    assert plain_stepped == 0
    assert fast == plain


def test_stepped_runs_are_exercised(table: TableCostModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the tightest muxserve case above (a stuck engine beside a running one) iterations
    do run without the engine; the records stay bit-equal."""
    plain, _ = run("muxserve", "trio", 3.5, 3, 200.0, False, table, monkeypatch)
    fast, stepped = run("muxserve", "trio", 3.5, 3, 200.0, True, table, monkeypatch)
    assert fast == plain
    assert stepped > 0
