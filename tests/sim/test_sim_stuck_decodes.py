"""Decodes at a page boundary that get no page drop out of the step: with the shortcuts the
scheduler finds them among the boundary decodes alone when none of the model's decodes was
preempted (no pass over every decode's status and computed tokens); records, steps and
preemptions equal the plain path's."""

from __future__ import annotations

import pytest
from tests.sim.test_sim_horizon import scripted
from tests.sim.test_sim_shortcuts import run

from fineserve.costmodel.table import TableCostModel
from fineserve.scheduler.local.scheduler import LocalScheduler
from fineserve.scheduler.local.sequence import Sequence
from fineserve.sim.catalog import GpuSpec


@pytest.mark.parametrize("scheme", ["static", "muxserve"])
@pytest.mark.parametrize("max_steps", [1, 64])
@pytest.mark.parametrize(("memory_mib", "seed"), [(2.5, 3), (4.0, 8), (8.0, 4)])
def test_stuck_decodes_drop_out_as_on_the_plain_path(
    scheme: str,
    max_steps: int,
    memory_mib: float,
    seed: int,
    table: TableCostModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FCFS schemes on a tight arena (decodes wait for pages at their page boundary): every
    record and count is the plain path's."""
    stuck = {"n": 0}
    grant_one_each = LocalScheduler._grant_one_each

    def counted(self: LocalScheduler, full: list[Sequence], *args: object) -> bool:
        ok = grant_one_each(self, full, *args)  # type: ignore[arg-type]
        if not ok and not self._cols[full[0].model].dirty:
            stuck["n"] += 1
        return ok

    monkeypatch.setattr(LocalScheduler, "_grant_one_each", counted)
    gpu = GpuSpec(memory_bytes=int(memory_mib * 1024**2), reserve_bytes=0, name="small")
    reqs = scripted(150, seed, 200.0)
    plain, plain_stats, _ = run(scheme, reqs, table, gpu, max_steps, False, monkeypatch)
    stuck["n"] = 0
    fast, fast_stats, _ = run(scheme, reqs, table, gpu, max_steps, True, monkeypatch)
    assert (fast, fast_stats) == (plain, plain_stats)
    if scheme == "muxserve":
        assert stuck["n"] > 0  # the shortcut had work to do
