"""`ClusterSim(slo_margin=...)`: engines serve tighter SLOs than the requests are judged at."""

from __future__ import annotations

import pytest
from tests.sim.conftest import tiny_model

from fineserve.costmodel.table import TableCostModel
from fineserve.sim.catalog import GpuSpec
from fineserve.sim.loop import ClusterSim, SimRequest
from fineserve.sim.placement import PlacedInstance, Placement
from fineserve.sim.schemes import get_scheme

SLO = 1.0
BURST = [SimRequest(f"r{i}", "m0", 0.01 * i, 1000, 4) for i in range(40)]


def sim_at(margin: float, table: TableCostModel, gpu: GpuSpec) -> ClusterSim:
    placement = Placement((PlacedInstance("m0", (0,)),), 1)
    return ClusterSim([tiny_model(ttft=SLO)], placement, get_scheme("fineserve"), table,
                      table.interference, gpu, slo_margin=margin)  # fmt: skip


def test_engines_see_the_scaled_slo_records_keep_the_models_own(table, gpu) -> None:
    sim = sim_at(0.5, table, gpu)
    assert sim.engines[0].engine.scheduler.models["m0"].ttft_slo_s == pytest.approx(0.5 * SLO)
    recs = list(sim.run(BURST, horizon_s=60.0).records.values())
    assert len(recs) == len(BURST) and {r.slo_ttft_s for r in recs} == {SLO}


def test_a_tighter_served_slo_rejects_requests_the_slo_would_admit(table, gpu) -> None:
    plain = list(sim_at(1.0, table, gpu).run(BURST, horizon_s=60.0).records.values())
    tight = list(sim_at(0.5, table, gpu).run(BURST, horizon_s=60.0).records.values())
    late = [r for r in plain if r.ttft_s is not None and r.ttft_s > 0.75 * SLO]
    assert late, "the burst must give TTFTs well past half the SLO"
    assert max(r.ttft_s or 0.0 for r in tight) < 0.75 * SLO
    assert 0 < sum(r.completed for r in tight) < sum(r.completed for r in plain)
    assert sum(r.error is not None for r in tight) > sum(r.error is not None for r in plain)
