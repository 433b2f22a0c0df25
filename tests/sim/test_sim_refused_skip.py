"""The scheduler skips a prefill pass that would repeat the last one, which refused every
waiting request (static admission, same lane, budget, waiting queue, running counts and
available pages): records, steps and preemptions equal the plain path's."""

from __future__ import annotations

import pytest
from tests.sim.test_sim_horizon import scripted
from tests.sim.test_sim_shortcuts import run

from fineserve.costmodel.table import TableCostModel
from fineserve.scheduler.local.policies.base import Admission, PolicyContext
from fineserve.scheduler.local.policies.fcfs import FCFSPolicy
from fineserve.scheduler.local.sequence import Sequence
from fineserve.sim.catalog import GpuSpec


@pytest.mark.parametrize("scheme", ["static", "muxserve"])
@pytest.mark.parametrize("max_steps", [1, 64])
@pytest.mark.parametrize(("memory_mib", "seed"), [(2.5, 3), (4.0, 8), (8.0, 4)])
def test_refused_pass_skip_gives_the_plain_records(
    scheme: str,
    max_steps: int,
    memory_mib: float,
    seed: int,
    table: TableCostModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FCFS schemes on a tight arena (requests wait that cannot start): with the shortcuts
    fewer admission passes run, and every record and count is the plain path's."""
    passes = {"n": 0}
    admit = FCFSPolicy.admit

    def counted(self: FCFSPolicy, waiting: list[Sequence], ctx: PolicyContext) -> Admission:
        passes["n"] += 1
        return admit(self, waiting, ctx)

    monkeypatch.setattr(FCFSPolicy, "admit", counted)
    gpu = GpuSpec(memory_bytes=int(memory_mib * 1024**2), reserve_bytes=0, name="small")
    reqs = scripted(150, seed, 200.0)
    plain, plain_stats, _ = run(scheme, reqs, table, gpu, max_steps, False, monkeypatch)
    plain_passes, passes["n"] = passes["n"], 0
    fast, fast_stats, _ = run(scheme, reqs, table, gpu, max_steps, True, monkeypatch)
    assert (fast, fast_stats) == (plain, plain_stats)
    assert passes["n"] <= plain_passes
    if memory_mib < 3 and max_steps == 1:
        assert passes["n"] < plain_passes  # the skip had work to do
