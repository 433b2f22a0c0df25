"""`SchedulerState.trim_skips`: a plan (or chain) that took no page early is not trimmed when
it stops early. Records, steps and preemptions equal those with every trim run, and every
trim that gives pages back belongs to a plan that reserved pages (`Lane.reserved`)."""

from __future__ import annotations

import pytest
from tests.sim.conftest import colocated_pair
from tests.sim.test_sim_horizon import facts, scripted

from fineserve.costmodel.table import TableCostModel
from fineserve.engine.step import ModelBatch, StepPlan
from fineserve.scheduler.local.scheduler import LocalScheduler
from fineserve.scheduler.local.sequence import Sequence
from fineserve.scheduler.local.state import Lane, SchedulerState
from fineserve.sim.catalog import GpuSpec
from fineserve.sim.loop import ClusterSim
from fineserve.sim.schemes import get_scheme


def run(
    scheme: str, memory_mib: float, skips: bool, table: TableCostModel, mp: pytest.MonkeyPatch
) -> tuple[dict[str, tuple[object, ...]], tuple[int, int, int], int, int]:
    """(facts, (steps, events, preemptions), trims run, trims that freed pages of a plan
    that reserved none)."""
    reserved_ids: set[str] = set()
    trims = unreserved_frees = 0
    trim, reserve = SchedulerState._trim, LocalScheduler._reserve_horizon

    def noting_reserve(
        self: LocalScheduler, plan: StepPlan, k: int, lane: Lane | None = None, margin: bool = True
    ) -> bool:
        before = sum(map(len, plan.new_pages.values()))
        ok = reserve(self, plan, k, lane, margin)
        if sum(map(len, plan.new_pages.values())) > before:
            for batch in plan.batches:
                reserved_ids.update(batch.request_ids)
        return ok

    def noting_trim(
        self: SchedulerState, batch: ModelBatch, seqs: list[Sequence], steps: int
    ) -> None:
        nonlocal trims, unreserved_frees
        trims += 1
        held = sum(len(s.pages) for s in seqs)
        trim(self, batch, seqs, steps)
        if sum(len(s.pages) for s in seqs) < held and reserved_ids.isdisjoint(batch.request_ids):
            unreserved_frees += 1

    mp.setattr(LocalScheduler, "_reserve_horizon", noting_reserve)
    mp.setattr(SchedulerState, "_trim", noting_trim)
    mp.setattr(SchedulerState, "trim_skips", skips)
    models, placement = colocated_pair()
    gpu = GpuSpec(memory_bytes=int(memory_mib * 1024**2), reserve_bytes=0, name="small")
    sim = ClusterSim(models, placement, get_scheme(scheme), table, table.interference, gpu)
    records = sim.run(scripted(120, 4, 150.0)).records
    stats = (sim.stats.steps, sim.stats.events, sim.stats.preemptions)
    return {r: facts(rec) for r, rec in records.items()}, stats, trims, unreserved_frees


@pytest.mark.parametrize("scheme", ["static", "prism", "muxserve", "fineserve", "fineserve_plus"])
@pytest.mark.parametrize("memory_mib", [12.0, 64.0])
def test_trim_skips_keep_the_records(
    scheme: str, memory_mib: float, table: TableCostModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = run(scheme, memory_mib, False, table, monkeypatch)
    fast = run(scheme, memory_mib, True, table, monkeypatch)
    assert fast[:2] == plain[:2]
    assert plain[3] == 0  # only plans that reserved pages had any to give back
    assert fast[2] <= plain[2]


def test_trim_skips_are_exercised(table: TableCostModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prism's chains fold at every plan end: most of their trims are skipped."""
    plain = run("prism", 64.0, False, table, monkeypatch)
    fast = run("prism", 64.0, True, table, monkeypatch)
    assert fast[:2] == plain[:2]
    assert plain[2] > 10 and fast[2] < plain[2] // 2
