"""`sim.collector.rare_collections`: the collector's thresholds during a run, restored after."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from tests.sim.conftest import tiny_model

from fineserve.sim.collector import RUN_THRESHOLDS, rare_collections
from fineserve.sim.loop import ClusterSim, SimRequest
from fineserve.sim.placement import PlacedInstance, Placement
from fineserve.sim.schemes import get_scheme

OUTSIDE = (701, 11, 12)  # distinct from both the defaults and the run's thresholds


@pytest.fixture(autouse=True)
def outside_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(*OUTSIDE)
    yield
    gc.set_threshold(*before)


def test_thresholds_are_raised_within_and_restored_after() -> None:
    with rare_collections():
        assert gc.get_threshold() == RUN_THRESHOLDS
    assert gc.get_threshold() == OUTSIDE


def test_thresholds_are_restored_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), rare_collections((5_000, 5, 5)):
        assert gc.get_threshold() == (5_000, 5, 5)
        raise RuntimeError("boom")
    assert gc.get_threshold() == OUTSIDE


def test_a_simulation_runs_under_the_run_thresholds(table, gpu) -> None:
    placement = Placement((PlacedInstance("m0", (0,)),), 1)
    sim = ClusterSim([tiny_model()], placement, get_scheme("fineserve"), table,
                     table.interference, gpu)  # fmt: skip
    seen: list[tuple[int, int, int]] = []

    def replan(t: float) -> None:  # called by the event loop, mid-run
        seen.append(gc.get_threshold())

    reqs = [SimRequest(f"r{i}", "m0", 0.1 * i, 100, 4) for i in range(5)]
    book = sim.run(reqs, horizon_s=10.0, replace_at=[0.25], replan=replan)
    assert seen == [RUN_THRESHOLDS]
    assert gc.get_threshold() == OUTSIDE
    assert all(r.completed for r in book.values())
