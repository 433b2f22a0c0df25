"""The simulator's multi-step decode horizon gives the records of single steps."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from tests.sim.conftest import TINY, TINY_Q

from fineserve.costmodel.table import TableCostModel
from fineserve.scheduler.local.scheduler import LocalScheduler
from fineserve.scheduler.local.state import Lane
from fineserve.sim.catalog import GpuSpec, SimModel
from fineserve.sim.device import Activity, GpuGroup
from fineserve.sim.loop import ClusterSim, SimRequest
from fineserve.sim.placement import PlacedInstance, Placement
from fineserve.sim.schemes import get_scheme
from fineserve.workload.metrics import RequestRecord


def scripted(n: int, seed: int, rate: float) -> list[SimRequest]:
    """Poisson arrivals over two models, mixed prompt and output lengths."""
    rng = random.Random(seed)
    t, reqs = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        reqs.append(SimRequest(f"r{i}", f"m{i % 2}", t, rng.randint(5, 300), rng.randint(1, 80)))
    return reqs


def simulate(
    scheme: str,
    reqs: list[SimRequest],
    table: TableCostModel,
    gpu: GpuSpec,
    max_steps: int,
    ttft: float = 0.5,
) -> tuple[dict[str, RequestRecord], ClusterSim]:
    models = [
        SimModel("m0", TINY, 1.0, ttft_slo_s=ttft, tpot_slo_s=0.05),
        SimModel("m1", TINY_Q, 1.0, ttft_slo_s=ttft, tpot_slo_s=0.05),
    ]
    placement = Placement(tuple(PlacedInstance(m.name, (0,)) for m in models), 1)
    sim = ClusterSim(
        models, placement, get_scheme(scheme), table, table.interference, gpu, max_steps=max_steps
    )
    return sim.run(reqs).records, sim


def facts(rec: RequestRecord) -> tuple[object, ...]:
    return (rec.first_token_s, rec.finish_s, rec.output_tokens, rec.error)


def same(a: RequestRecord, b: RequestRecord, tol: float = 1e-9) -> bool:
    """Equal records, times within `tol` (float rounding of summed step times)."""
    for x, y in zip(facts(a), facts(b), strict=True):
        if isinstance(x, float) and isinstance(y, float):
            if abs(x - y) > tol * max(1.0, abs(x)):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("scheme", ["fineserve", "fineserve_plus", "static", "muxserve"])
@pytest.mark.parametrize(("seed", "rate", "ttft"), [(1, 5.0, 0.5), (2, 200.0, 0.08)])
def test_horizon_records_equal_single_step_records(
    scheme: str, seed: int, rate: float, ttft: float, table: TableCostModel, gpu: GpuSpec
) -> None:
    """A scripted workload, calm (long horizons) or overloaded (arrivals cut them, SLO
    rejections): every record as with single steps, times within float rounding."""
    reqs = scripted(60, seed, rate)
    single, one = simulate(scheme, reqs, table, gpu, 1, ttft)
    multi, many = simulate(scheme, reqs, table, gpu, 64, ttft)
    assert one.stats.steps == many.stats.steps  # the same iterations ...
    if scheme != "muxserve":  # (one engine over both models: no lane serves one model)
        assert many.stats.events < one.stats.events * (0.5 if rate < 10 else 0.8)  # ... fewer
    if scheme.startswith("fineserve"):  # SAAB and slack reject when overloaded
        assert any(r.error for r in single.values()) == (rate > 10)
    assert single.keys() == multi.keys()
    for rid, rec in single.items():
        assert same(multi[rid], rec), (rid, facts(rec), facts(multi[rid]))


def test_one_decode_runs_as_one_horizon(table: TableCostModel, gpu: GpuSpec) -> None:
    """No arrival or end inside: the 39 decode iterations after the prefill are one plan,
    finishing when 39 single steps would."""
    reqs = [SimRequest("a", "m0", 0.0, 20, 40)]
    single, one = simulate("fineserve", reqs, table, gpu, 1)
    multi, many = simulate("fineserve", reqs, table, gpu, 64)
    assert one.stats.events == 41 and many.stats.events == 3  # arrival, prefill, horizon
    assert multi["a"].finish_s == pytest.approx(single["a"].finish_s, rel=1e-12)


def test_an_arrival_cuts_the_horizon_after_the_iteration_in_progress(
    table: TableCostModel, gpu: GpuSpec
) -> None:
    reqs = [SimRequest("a", "m0", 0.0, 20, 60), SimRequest("b", "m0", 0.2, 10, 5)]
    single, _ = simulate("fineserve", reqs, table, gpu, 1)
    multi, many = simulate("fineserve", reqs, table, gpu, 64)
    assert many.stats.steps == 60  # b's 5 iterations run beside 5 of a's 59 decodes
    assert 4 < many.stats.events < 60
    for rid in ("a", "b"):
        assert same(multi[rid], single[rid]), rid


def test_per_token_times_run_single_steps(table: TableCostModel, gpu: GpuSpec) -> None:
    models = [SimModel("m0", TINY, 1.0)]
    placement = Placement((PlacedInstance("m0", (0,)),), 1)
    sim = ClusterSim(
        models, placement, get_scheme("fineserve"), table, table.interference, gpu, True
    )
    rec = sim.run([SimRequest("a", "m0", 0.0, 20, 10)]).records["a"]
    assert len(rec.token_times_s) == 10 and len(set(rec.token_times_s)) == 10
    assert sim.stats.events == 11


def test_cut_ends_an_activity_at_the_mark_in_progress(table: TableCostModel) -> None:
    group = GpuGroup((0,), table.interference)
    act = Activity(3.0, 0.0, None, marks=[1.0, 2.0, 3.0])
    group.add(act)
    group.rerate()
    group.advance(1.5)  # inside the second iteration
    assert group.cut(act) == 2
    assert act.remaining == pytest.approx(0.5)
    assert group.next_finish() == pytest.approx(2.0)


@pytest.mark.parametrize("end", [0.05, 0.1234, 0.3])
def test_the_end_of_the_run_applies_the_iterations_single_steps_would_have(
    end: float, table: TableCostModel, gpu: GpuSpec
) -> None:
    """A run stopped at `end` inside a horizon: the unfinished request has the tokens of the
    iterations finished by then, as with single steps."""
    models = [SimModel("m0", TINY, 1.0)]
    placement = Placement((PlacedInstance("m0", (0,)),), 1)
    counts = []
    for k in (1, 64):
        sim = ClusterSim(
            models, placement, get_scheme("fineserve"), table, table.interference, gpu, max_steps=k
        )
        rec = sim.run([SimRequest("a", "m0", 0.0, 20, 400)], horizon_s=end).records["a"]
        assert rec.finish_s is None
        counts.append(rec.output_tokens)
    assert counts[0] == counts[1] > 1


@pytest.mark.parametrize(("seed", "rate", "memory_mib"), [(3, 5.0, 64.0), (6, 150.0, 12.0)])
def test_map_cost_horizon_takes_no_page_early(
    seed: int, rate: float, memory_mib: float, table: TableCostModel
) -> None:
    """Prism pays for (un)mapping pages in the step that maps them: its horizons take no
    page early (`horizon_pages` False: only the iterations the decodes' pages hold), so each
    step's map operations and charge are those of single steps. Calm and memory-tight: the
    same records (times within float rounding), steps and preemptions; fewer events."""
    gpu = GpuSpec(memory_bytes=int(memory_mib * 1024**2), reserve_bytes=0, name="test")
    reqs = scripted(80, seed, rate)
    single, one = simulate("prism", reqs, table, gpu, 1)
    multi, many = simulate("prism", reqs, table, gpu, 64)
    assert get_scheme("prism").map_cost_s > 0
    assert many.stats.steps == one.stats.steps
    assert many.stats.preemptions == one.stats.preemptions
    assert many.stats.events < one.stats.events
    maps = [sum(e.allocator.map_ops_by_model.values()) for e in (one.engines[0], many.engines[0])]
    assert maps[0] == maps[1] > 0
    assert single.keys() == multi.keys()
    for rid, rec in single.items():
        assert same(multi[rid], rec), (rid, facts(rec), facts(multi[rid]))


@pytest.mark.parametrize("scheme", ["static"])
@pytest.mark.parametrize(("seed", "memory_mib"), [(7, 2.5), (8, 4.0), (9, 8.0)])
def test_horizon_while_admission_refuses_every_waiting_request(
    scheme: str,
    seed: int,
    memory_mib: float,
    table: TableCostModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small arena, long requests at a high rate (FCFS): requests wait that cannot start
    until a sequence ends. Horizons are made while they wait (`LocalScheduler._blocked`),
    and every record, step and preemption is that of single steps."""
    blocked = [0]
    original = LocalScheduler._blocked

    def counted(self: LocalScheduler, lane: Lane) -> bool:
        answer = original(self, lane)
        blocked[0] += answer
        return answer

    monkeypatch.setattr(LocalScheduler, "_blocked", counted)
    gpu = GpuSpec(memory_bytes=int(memory_mib * 1024**2), reserve_bytes=0, name="test")
    reqs = [replace(r, output_tokens=r.output_tokens * 4) for r in scripted(120, seed, 150.0)]
    single, one = simulate(scheme, reqs, table, gpu, 1, ttft=100.0)
    assert blocked[0] == 0  # (asked only for multi-step plans)
    multi, many = simulate(scheme, reqs, table, gpu, 64, ttft=100.0)
    assert blocked[0] > 0
    assert (many.stats.steps, many.stats.preemptions) == (one.stats.steps, one.stats.preemptions)
    assert many.stats.events < one.stats.events
    assert single.keys() == multi.keys()
    for rid, rec in single.items():
        assert same(multi[rid], rec), (rid, facts(rec), facts(multi[rid]))
