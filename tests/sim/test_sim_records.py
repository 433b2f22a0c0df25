"""Determinism under a seed, and the simulator's records equal a live-style client's records."""

from __future__ import annotations

import dataclasses

from tests.sim.conftest import TINY_Q, tiny_model

from fineserve.costmodel.table import TableCostModel
from fineserve.engine.clock import VirtualClock
from fineserve.engine.engine import Engine
from fineserve.sim.catalog import GpuSpec, SimModel
from fineserve.sim.executor import SimExecutor
from fineserve.sim.loop import ClusterSim, SimRequest
from fineserve.sim.placement import PlacedInstance, Placement
from fineserve.sim.schemes import build_group_engines, get_scheme
from fineserve.sim.workload import poisson_requests
from fineserve.workload.metrics import RequestRecord, summarize

LENGTHS = [(30, 4), (200, 12), (700, 3), (64, 40), (5, 1)]


def _models() -> list[SimModel]:
    return [tiny_model("m0", 6.0, 0.3), SimModel("m1", TINY_Q, 3.0, ttft_slo_s=0.3)]


def _run(scheme: str, seed: int, table: TableCostModel, gpu: GpuSpec) -> list[RequestRecord]:
    models = _models()
    reqs = poisson_requests(models, LENGTHS, duration_s=5.0, seed=seed)
    placement = Placement((PlacedInstance("m0", (0,)), PlacedInstance("m1", (0,))), 1)
    sim = ClusterSim(models, placement, get_scheme(scheme), table, table.interference, gpu, True)
    return sim.run(reqs).values()


def test_same_seed_same_records(table, gpu) -> None:
    for scheme in ("prism", "fineserve_plus"):
        a, b = _run(scheme, 3, table, gpu), _run(scheme, 3, table, gpu)
        assert [dataclasses.asdict(r) for r in a] == [dataclasses.asdict(r) for r in b]
        assert len(a) > 20
    other = _run("fineserve_plus", 4, table, gpu)
    assert [r.arrival_s for r in other] != [r.arrival_s for r in a]


def _live_records(reqs: list[SimRequest], table: TableCostModel, gpu: GpuSpec) -> dict:
    """Drive one engine with its own virtual clock, noting outputs as the streaming client does
    (`workload.client`): first chunk with tokens -> first_token_s, one time per token, finish
    when the stream ends; nothing from the simulator's loop or RecordBook."""
    m = tiny_model("m0", 1.0, 0.5)
    engine, _ = build_group_engines(get_scheme("fineserve"), [m], 10 * 2**20, table)[1][0]
    clock = VirtualClock()
    engine = Engine(engine.scheduler, SimExecutor(table), clock)
    records: dict[str, RequestRecord] = {}
    pending = list(reqs)
    while pending or engine.has_work():
        if not engine.has_work() and pending:
            clock.sleep_until(pending[0].arrival_s)
        while pending and pending[0].arrival_s <= clock.now():
            r = pending.pop(0)
            records[r.request_id] = RequestRecord("m0", r.arrival_s, prompt_tokens=r.prompt_tokens,
                                                  slo_ttft_s=0.5)  # fmt: skip
            engine.add_request(r.request_id, "m0", [1] * r.prompt_tokens, r.output_tokens,
                               arrival_s=r.arrival_s)  # fmt: skip
        for out in engine.step():
            rec = records[out.request_id]
            if out.token_ids:
                rec.first_token_s = rec.first_token_s or clock.now()
                rec.token_times_s.append(clock.now())
                rec.output_tokens += len(out.token_ids)
            if out.finished:
                rec.finish_s = clock.now()
    return records


def test_sim_records_equal_live_client_records(table, gpu) -> None:
    """One model alone: the event loop must give exactly the engine's own step loop."""
    reqs = [SimRequest(f"r{i}", "m0", 0.013 * i * i, p, o)
            for i, (p, o) in enumerate(LENGTHS * 3)]  # fmt: skip
    live = _live_records(reqs, table, gpu)
    m = tiny_model("m0", 1.0, 0.5)
    placement = Placement((PlacedInstance("m0", (0,)),), 1)
    sim = ClusterSim([m], placement, get_scheme("fineserve"), table, table.interference,
                     GpuSpec(10 * 2**20 + 1_000_000, 0), True)  # fmt: skip
    simmed = sim.run(reqs).records
    assert list(simmed) == list(live)
    for rid, rec in live.items():
        assert dataclasses.asdict(simmed[rid]) == dataclasses.asdict(rec), rid
    assert summarize(simmed.values(), 10.0) == summarize(live.values(), 10.0)
