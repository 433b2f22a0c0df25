"""Plan chains: a lane's plan is extended by the plans single steps would make next (the same
grants and early pages at the same events), each run as its own activity, the engine applying
their tokens once at the chain's end. Records are bit-equal to the plain path's
(the same plans, grants, events and floats), and so are steps, preemptions and events."""

from __future__ import annotations

import math

import pytest
from tests.sim.test_sim_horizon import facts
from tests.sim.test_sim_parked import placement_for, requests, small_gpu, small_models

from fineserve.costmodel.table import TableCostModel
from fineserve.engine.engine import Engine
from fineserve.sim.loop import ClusterSim
from fineserve.sim.schemes import get_scheme

Outcome = tuple[dict[str, tuple[object, ...]], tuple[int, int, int], dict[str, int]]


def run(
    scheme: str,
    kind: str,
    memory_mib: float,
    seed: int,
    rate: float,
    horizon_s: float,
    chains: bool,
    table: TableCostModel,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Outcome, int]:
    """(facts per request, (steps, preemptions, events), tokens per request; plans the
    engine's plans were extended by)."""
    monkeypatch.setattr(ClusterSim, "chains", chains)
    extended = {"n": 0}
    extend_step = Engine.extend_step

    def counted(self: Engine, step_id: int, done: int, *args: int) -> int:
        k = extend_step(self, step_id, done, *args)
        extended["n"] += k > 0
        return k

    monkeypatch.setattr(Engine, "extend_step", counted)
    gpu = small_gpu(memory_mib)
    placement = placement_for(kind)
    models = small_models(placement)
    sim = ClusterSim(models, placement, get_scheme(scheme), table, table.interference, gpu)
    records = sim.run(requests(150, seed, rate, len(models)), horizon_s=horizon_s).records
    outcome = {rid: facts(rec) for rid, rec in records.items()}
    counts = (sim.stats.steps, sim.stats.preemptions, sim.stats.events)
    tokens = {
        rid: len(seq.tokens)
        for eng in sim.engines
        for rid, seq in eng.engine.scheduler.seqs.items()
    }
    return (outcome, counts, tokens), extended["n"]


@pytest.mark.parametrize(
    ("scheme", "kind", "memory_mib", "seed", "rate", "horizon_s", "extends"),
    [
        ("prism", "trio", 24.0, 6, 100.0, math.inf, True),  # the pages of a few granules
        ("prism", "trio", 40.0, 7, 50.0, math.inf, True),
        ("prism", "pair", 64.0, 3, 20.0, math.inf, True),  # calm: long chains
        ("prism", "pair", 64.0, 3, 20.0, 2.5, True),  # chains in flight at the end settled
        ("prism", "trio", 32.0, 5, 100.0, 2.0, True),
        ("static", "trio", 4.0, 3, 200.0, math.inf, True),  # tight: early pages refused
        ("static", "trio", 8.0, 4, 100.0, math.inf, True),
        ("static", "pair", 2.5, 8, 100.0, 3.0, False),
        ("static", "pair", 64.0, 5, 20.0, math.inf, False),  # horizons end at arrivals, ends
        ("muxserve", "pair", 3.0, 6, 100.0, math.inf, False),  # one model per GPU set
    ],
)
def test_chains_give_the_records_of_the_plain_path(
    scheme: str,
    kind: str,
    memory_mib: float,
    seed: int,
    rate: float,
    horizon_s: float,
    extends: bool,
    table: TableCostModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Engines of one model sharing an arena, on overlapping GPU sets: every record
    bit-equal, the same steps, preemptions and events, the same tokens of requests
    unfinished at the end; under pressure, plans were extended."""
    args = (scheme, kind, memory_mib, seed, rate, horizon_s)
    plain, plain_extended = run(*args, False, table, monkeypatch)
    fast, fast_extended = run(*args, True, table, monkeypatch)
    assert plain_extended == 0
    assert fast == plain
    assert (fast_extended > 0) == extends


@pytest.mark.parametrize(
    ("scheme", "kind", "memory_mib"), [("prism", "trio", 24.0), ("static", "trio", 4.0)]
)
def test_refused_extensions_end_chains_exactly(
    scheme: str,
    kind: str,
    memory_mib: float,
    table: TableCostModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An extension refused at any point (here every other one, before the engine is asked:
    a refusal changes nothing) ends the chain there, one-step plans included: the engine
    then plans the lane itself, and records stay those of the plain path."""
    plain, _ = run(scheme, kind, memory_mib, 6, 100.0, math.inf, False, table, monkeypatch)
    calls = {"n": 0}
    extend_step = Engine.extend_step

    def every_other(self: Engine, step_id: int, done: int, *args: int) -> int:
        calls["n"] += 1
        return extend_step(self, step_id, done, *args) if calls["n"] % 2 else 0

    monkeypatch.setattr(Engine, "extend_step", every_other)
    fast, _ = run(scheme, kind, memory_mib, 6, 100.0, math.inf, True, table, monkeypatch)
    assert fast == plain
    assert calls["n"] > 2
