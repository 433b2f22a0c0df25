"""`SchemeSpec.reroute_rejected`: a request one instance rejects is sent on to another."""

from __future__ import annotations

from dataclasses import replace

from tests.sim.conftest import tiny_model

from fineserve.costmodel.table import TableCostModel
from fineserve.sim.catalog import GpuSpec
from fineserve.sim.loop import ClusterSim, SimRequest
from fineserve.sim.placement import PlacedInstance, Placement
from fineserve.sim.records import RecordBook
from fineserve.sim.schemes import get_scheme

# routed alternately (fewest in flight, then first placed): the long prompts all go to the
# first instance, whose queue then rejects some, while the second has time to spare
BURST = [SimRequest(f"r{i}", "m0", 0.001 * i, 1500 if i % 2 == 0 else 50, 4) for i in range(16)]


def run(reroute: bool, instances: int, table: TableCostModel, gpu: GpuSpec) -> ClusterSim:
    placement = Placement(tuple(PlacedInstance("m0", (g,)) for g in range(instances)), instances)
    scheme = replace(get_scheme("fineserve_plus"), reroute_rejected=reroute)
    sim = ClusterSim([tiny_model(ttft=1.0)], placement, scheme, table, table.interference, gpu)
    sim.run(BURST, horizon_s=120.0)
    return sim


def rejected(book: RecordBook) -> list[str]:
    return [rid for rid, r in book.records.items() if r.error == "rejected"]


def engine_rejections(sim: ClusterSim) -> int:
    return sum(e.engine.scheduler.stats.rejected for e in sim.engines)


def test_rejections_sent_on_meet_their_slo_on_the_other_instance(table, gpu) -> None:
    plain, rerouted = run(False, 2, table, gpu), run(True, 2, table, gpu)
    assert rejected(plain.book), "the first instance must reject part of the burst"
    met_plain = sum(r.meets_slo() for r in plain.book.values())
    met_rerouted = sum(r.meets_slo() for r in rerouted.book.values())
    assert met_rerouted > met_plain
    # some rejections were not final: the request was admitted on the other instance
    assert engine_rejections(rerouted) > len(rejected(rerouted.book))


def test_records_keep_arrival_and_every_request_has_one(table, gpu) -> None:
    sim = run(True, 2, table, gpu)
    recs = sim.book.records
    assert sorted(recs) == sorted(r.request_id for r in BURST)
    for req in BURST:
        assert recs[req.request_id].arrival_s == req.arrival_s
    # nothing left in flight: every routing slot given back, nothing waiting to be sent on
    assert all(e.outstanding == 0 and not any(e.outstanding_by.values()) for e in sim.engines)
    assert not sim._rerouted and not sim._sent_to


def test_a_single_instance_has_nowhere_to_send_a_rejection(table, gpu) -> None:
    plain, rerouted = run(False, 1, table, gpu), run(True, 1, table, gpu)
    assert rejected(plain.book)
    assert rejected(rerouted.book) == rejected(plain.book)
    assert engine_rejections(rerouted) == len(rejected(rerouted.book))
