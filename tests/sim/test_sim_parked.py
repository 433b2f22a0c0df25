"""Parked lanes: an idle lane with work whose last plan was empty and changed nothing, under a
static policy, is not planned again at its group's events until its engine's state changes;
records, steps and preemptions equal the plain path's, and every skipped plan would have been
empty and changed nothing."""

from __future__ import annotations

import copy
import random
from dataclasses import replace

import pytest
from tests.sim.conftest import TINY, TINY_Q
from tests.sim.test_sim_horizon import facts

from fineserve.costmodel.base import InstanceKey, InterferenceModel
from fineserve.costmodel.fit import StepCoeffs
from fineserve.costmodel.table import TableCostModel
from fineserve.engine.engine import Engine
from fineserve.engine.step import StepPlan, StepResult
from fineserve.memory.allocator import ModelKV
from fineserve.memory.registry import make_allocator
from fineserve.scheduler.local.config import SchedulerConfig, ServedModel
from fineserve.scheduler.local.scheduler import LocalScheduler
from fineserve.sim.catalog import GpuSpec, SimModel
from fineserve.sim.loop import ClusterSim, SimRequest
from fineserve.sim.placement import PlacedInstance, Placement
from fineserve.sim.schemes import SchemeSpec, get_scheme

Outcome = tuple[dict[str, tuple[object, ...]], tuple[int, int]]


def placement_for(kind: str) -> Placement:
    """ "pair": m0 on GPU 0, m1 on GPUs 0-1 (two GPU sets, one domain: each engine sees the
    other's events); "trio": m0 and m1 on GPU 0 (one muxserve engine, two static ones), m2 on
    GPUs 0-1."""
    if kind == "pair":
        return Placement((PlacedInstance("m0", (0,)), PlacedInstance("m1", (0, 1))), 2)
    on0 = (PlacedInstance("m0", (0,)), PlacedInstance("m1", (0,)))
    return Placement((*on0, PlacedInstance("m2", (0, 1))), 2)


def small_gpu(memory_mib: float) -> GpuSpec:
    """A GPU of `memory_mib` MiB, all of it KV arena (no reserve)."""
    return GpuSpec(memory_bytes=int(memory_mib * 1024**2), reserve_bytes=0, name="small")


def small_models(placement: Placement) -> list[SimModel]:
    """The placement's models by name: m0 and m2 TINY, m1 TINY_Q, each with TTFT SLO 2 s and
    TPOT SLO 50 ms."""
    names = sorted({inst.model for inst in placement.instances})
    types = [TINY, TINY_Q, TINY]
    return [
        SimModel(name, types[i], 1.0, ttft_slo_s=2.0, tpot_slo_s=0.05)
        for i, name in enumerate(names)
    ]


def requests(n: int, seed: int, rate: float, models: int) -> list[SimRequest]:
    """Poisson arrivals over `models` models in turn, mixed prompt and output lengths."""
    rng = random.Random(seed)
    t, reqs = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        reqs.append(
            SimRequest(f"r{i}", f"m{i % models}", t, rng.randint(5, 300), rng.randint(1, 80))
        )
    return reqs


def scheme_spec(name: str) -> SchemeSpec:
    """A scheme by name; "muxserve_lockstep" is muxserve with one whole-engine plan per step
    (no lanes): one shared engine whose lane holds every model of its allocator, so it parks
    (muxserve's own lanes hold one model each of a shared, non-isolated arena, so they never
    park)."""
    if name == "muxserve_lockstep":
        return replace(get_scheme("muxserve"), lanes=False)
    return get_scheme(name)


def run(
    scheme: str,
    kind: str,
    gpu: GpuSpec,
    seed: int,
    max_steps: int,
    skip: bool,
    table: TableCostModel,
    monkeypatch: pytest.MonkeyPatch,
    checked: dict[str, int],
) -> Outcome:
    """Facts per request and (steps, preemptions); with `skip`, each parked lane the loop
    skips is planned on a deep copy of its scheduler and checked to be empty and clean."""
    monkeypatch.setattr(ClusterSim, "skip_parked", skip)
    parked = Engine.parked

    def verified(self: Engine, models: frozenset[str] | None = None) -> bool:
        answer = parked(self, models)
        if answer:
            twin = copy.deepcopy(self.scheduler)
            plan = twin.schedule(1e9, models)  # any time: the plan does not depend on it
            assert plan.empty and not plan.new_pages and not plan.preempted
            assert not twin.has_pending_outputs()
            checked["n"] += 1
        return answer

    monkeypatch.setattr(Engine, "parked", verified)
    placement = placement_for(kind)
    models = small_models(placement)
    spec = scheme_spec(scheme)
    sim = ClusterSim(models, placement, spec, table, table.interference, gpu, max_steps=max_steps)
    records = sim.run(requests(150, seed, 200.0, len(models))).records
    outcome = {rid: facts(rec) for rid, rec in records.items()}
    return outcome, (sim.stats.steps, sim.stats.preemptions)


@pytest.mark.parametrize("max_steps", [1, 64])
@pytest.mark.parametrize(
    ("scheme", "kind", "memory_mib", "seed", "parks"),
    [
        ("static", "pair", 1.5, 3, True),
        ("static", "pair", 2.5, 8, False),
        ("static", "trio", 4.0, 3, False),
        ("muxserve_lockstep", "trio", 3.5, 3, True),
        ("muxserve_lockstep", "trio", 5.0, 8, True),
        ("muxserve_lockstep", "trio", 64.0, 5, False),
        ("muxserve", "trio", 3.5, 3, False),
    ],
)
def test_parked_lanes_give_the_records_of_the_plain_path(
    scheme: str,
    kind: str,
    memory_mib: float,
    seed: int,
    parks: bool,
    max_steps: int,
    table: TableCostModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FCFS schemes on tight and ample arenas, engines whose GPU sets overlap: records, steps
    and preemptions exactly as when every idle lane with work is planned at every event of
    its group; under pressure lanes park (and each skipped plan is checked)."""
    gpu = small_gpu(memory_mib)
    checked = {"n": 0}
    args = (scheme, kind, gpu, seed, max_steps)
    plain = run(*args, False, table, monkeypatch, checked)
    assert checked["n"] == 0
    fast = run(*args, True, table, monkeypatch, checked)
    assert fast == plain
    assert (checked["n"] > 0) == parks


def scheduler(policy: str, tight: bool = True) -> LocalScheduler:
    """One engine's scheduler over two tiny models on a uniform arena of 4 blocks (tight)."""
    kvs = [ModelKV("m0", TINY.kv), ModelKV("m1", TINY_Q.kv)]
    block = max(k.fmt.page_bytes for k in kvs)
    alloc = make_allocator("uniform", block * (4 if tight else 4096), kvs)
    served = [ServedModel("m0", TINY.key, 4096, 2.0, 0.05), ServedModel("m1", TINY_Q.key, 4096)]
    coeffs = StepCoeffs(prefill=(0.01, 0.0001, 1e-7, 0.0, 0.0), decode=(0.005, 0.0002, 1e-6))
    cost = TableCostModel(
        {InstanceKey("tiny", "fp16", 1): coeffs, InstanceKey("tiny", "int4", 1): coeffs},
        InterferenceModel(0.5, 0.1),
    )
    return LocalScheduler(served, alloc, cost, policy, SchedulerConfig(token_budget=512))


def test_a_refused_fcfs_plan_parks_until_the_state_changes() -> None:
    """A prompt that cannot start (4 blocks, headroom) leaves an empty plan: the lane is
    parked; queuing a request ends it; a plan that runs never parks."""
    s = scheduler("fcfs")
    s.add_request("big", "m0", [1] * 400, 4, arrival_s=0.0, stream=False)
    plan = s.schedule(0.0)
    assert plan.empty
    assert not s.parked()  # its plan is still in flight
    s.update(plan, _result(plan), 0.0)
    assert s.parked() and s.parked(None)
    s.add_request("small", "m1", [1] * 4, 2, arrival_s=1.0, stream=False)
    assert not s.parked()
    plan = s.schedule(1.0)
    assert not plan.empty  # the small one starts
    s.update(plan, _result(plan), 1.0)
    assert not s.parked()


def test_a_time_dependent_policy_never_parks() -> None:
    """SAAB's admission depends on the time (rejections): an empty plan does not park."""
    s = scheduler("saab")
    s.add_request("big", "m1", [1] * 400, 4, arrival_s=0.0, stream=False)
    plan = s.schedule(0.0)
    s.update(plan, _result(plan), 0.0)
    assert plan.empty
    assert not s.parked()


def _result(plan: StepPlan) -> StepResult:
    """A result sampling token 7 for every request of the plan (none for an empty one)."""
    tokens = {rid: 7 for batch in plan.batches for rid in batch.request_ids}
    return StepResult(plan.step_id, tokens, 0.0)
