"""The scheduler's exact shortcuts (admission memo of a prefill pass, early stop of refused
decode page grants) give the records of the plain path, under memory pressure."""

from __future__ import annotations

import pytest
from tests.sim.conftest import colocated_pair
from tests.sim.test_sim_horizon import facts, scripted

from fineserve.costmodel.table import TableCostModel
from fineserve.scheduler.local.memory import PageBroker
from fineserve.scheduler.local.scheduler import LocalScheduler
from fineserve.sim.catalog import GpuSpec
from fineserve.sim.loop import ClusterSim, SimRequest
from fineserve.sim.schemes import get_scheme

SCHEMES = ["fineserve", "fineserve_plus", "static", "muxserve", "prism"]


def run(
    scheme: str,
    reqs: list[SimRequest],
    table: TableCostModel,
    gpu: GpuSpec,
    max_steps: int,
    shortcuts: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[dict[str, tuple[object, ...]], tuple[int, int], dict[str, int]]:
    """(facts per request, (steps, preemptions), calls of the checks shortcuts may skip)."""
    calls = {"available": 0, "pick_victim": 0}
    available, pick_victim = PageBroker.available, PageBroker.pick_victim

    def counted_available(self: PageBroker, model: str) -> int:
        calls["available"] += 1
        return available(self, model)

    def counted_pick(self: PageBroker, *args: object) -> object:
        calls["pick_victim"] += 1
        return pick_victim(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(PageBroker, "available", counted_available)
    monkeypatch.setattr(PageBroker, "pick_victim", counted_pick)
    monkeypatch.setattr(LocalScheduler, "shortcuts", shortcuts)
    models, placement = colocated_pair()
    sim = ClusterSim(
        models, placement, get_scheme(scheme), table, table.interference, gpu, max_steps=max_steps
    )
    records = sim.run(reqs).records
    stats = (sim.stats.steps, sim.stats.preemptions)
    return {rid: facts(rec) for rid, rec in records.items()}, stats, calls


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("max_steps", [1, 64])
@pytest.mark.parametrize(("memory_mib", "seed"), [(2.5, 3), (8.0, 4), (64.0, 5)])
def test_shortcuts_give_the_records_of_the_plain_path(
    scheme: str,
    max_steps: int,
    memory_mib: float,
    seed: int,
    table: TableCostModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Long prompts and outputs at a high rate on a small arena (waiting requests that cannot
    start, refused page grants, preemptions): every record, step count and preemption count
    exactly as without the shortcuts; with them, fewer allocator queries under pressure."""
    if scheme == "prism":  # paged_vmm maps 2 MiB granules: a few of them at least
        memory_mib += 10.0
    gpu = GpuSpec(memory_bytes=int(memory_mib * 1024**2), reserve_bytes=0, name="small")
    reqs = scripted(120, seed, 150.0)
    plain, plain_stats, plain_calls = run(scheme, reqs, table, gpu, max_steps, False, monkeypatch)
    fast, fast_stats, fast_calls = run(scheme, reqs, table, gpu, max_steps, True, monkeypatch)
    assert fast_stats == plain_stats
    assert fast == plain
    assert fast_calls["available"] <= plain_calls["available"]
    assert fast_calls["pick_victim"] <= plain_calls["pick_victim"]
    if memory_mib < 20:  # the shortcuts had work to do
        assert fast_calls["available"] < plain_calls["available"]


def test_shortcuts_are_exercised(table: TableCostModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a tight setting of the test above requests wait that cannot start (the memo
    answers most admission checks), decode grants are refused with no candidate (the early
    stop skips the rest) and sequences are preempted; records still equal."""
    gpu = GpuSpec(memory_bytes=int(2.5 * 1024**2), reserve_bytes=0, name="small")
    reqs = scripted(120, 3, 150.0)
    plain, plain_stats, plain_calls = run("static", reqs, table, gpu, 1, False, monkeypatch)
    fast, fast_stats, fast_calls = run("static", reqs, table, gpu, 1, True, monkeypatch)
    assert (fast, fast_stats) == (plain, plain_stats)
    assert plain_stats[1] > 0  # preemptions: memory is short
    assert fast_calls["available"] * 5 < plain_calls["available"]
    assert fast_calls["pick_victim"] < plain_calls["pick_victim"]
