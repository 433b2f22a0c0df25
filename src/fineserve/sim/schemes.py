"""The serving schemes the simulator compares, and how each builds the engines of a GPU group.

Each scheme is a frozen `SchemeSpec`: its KV memory scheme (`memory.registry`), local policy
(`scheduler.local.policies`), whether each model runs in its own engine process
(`engine_per_model`: static vLLM instances, Prism's per-model engines) or all co-located models
share one engine (MuxServe's unit scheduler, FineServe's local scheduler), how the placement
scores GPUs, and its memory reserves. See docs/baselines.md for the sources.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fineserve.costmodel.base import CostModel, InterferenceModel
from fineserve.engine.engine import Engine
from fineserve.memory.allocator import KVAllocator, ModelKV
from fineserve.memory.registry import make_allocator
from fineserve.memory.slab_size import choose_slab_bytes
from fineserve.scheduler.local.config import SchedulerConfig, ServedModel
from fineserve.scheduler.local.policies import POLICIES, Policy
from fineserve.scheduler.local.scheduler import LocalScheduler
from fineserve.sim.catalog import SimModel
from fineserve.sim.executor import LinearCostModel, SimExecutor


@dataclass(frozen=True)
class SchemeSpec:
    """One serving scheme (see the module docstring).

    `reserve`: "none"; "rate" (each model is owed a rate-proportional share of the group's KV
    memory, MuxServe's quota; unused quota can be borrowed while nobody claims it);
    "floor" (each model is owed `floor_tokens` of KV, FineServe's starvation guard).
    `placement_candidates`: placement policies whose placements are tried in a planning
    simulation of this scheme, the best kept (`sim.verify`); empty: `placement_policy` alone.
    `placement_slo_margins`: one more candidate per margin, `"{policy}@{margin}"`: the first
    candidate policy planned with every model's SLOs scaled by the margin (0.5: for half the
    SLOs the requests are judged at).
    `served_slo_margins`: one more candidate per margin, `"{policy}@{margin}:served"`: the
    same placement, with engines that also serve to the scaled SLOs (they plan, admit and
    reject for those deadlines; `ClusterSim(slo_margin=...)`).
    `refine_policy`: after the planning runs, the winning candidate, when the scheme's own
    policy made it, is re-planned by this policy at the same margins and run on the same
    planning workload when its placement differs; the better of the two is kept.
    `verify_s`: the planning workload's arrival window.
    `target_slabs`: about how many slabs a KV Slab arena is cut into (`slab_bytes_for`); more,
    smaller slabs strand fewer free pages in partly used slabs.
    `growth_pages`: pages per running sequence kept free at admission
    (`SchedulerConfig.growth_pages_per_running`).
    `interference_aware`: the local scheduler plans each lane knowing the engine's other lanes
    in flight on its GPUs (`LocalScheduler(interference=...)`, the simulator's own model).
    `reroute_rejected`: a request an engine rejects (finish reason "rejected": it cannot
    meet its TTFT deadline there) is sent on to the least loaded instance of its model it
    has not tried, at the moment of the rejection and with its own arrival time (so the
    same deadline); it fails as rejected only once every instance has refused it
    (`ClusterSim`; the gateway does the same, `cluster.gateway`).
    """

    name: str
    memory: str
    policy: str
    engine_per_model: bool
    placement_score: str
    placement_policy: str = "fineserve"
    token_budget: int = 2048
    max_running: int = 256
    reserve: str = "none"
    floor_tokens: int = 4096
    map_cost_s: float = 0.0
    target_slabs: int = 128
    lanes: bool = False
    policy_options: tuple[tuple[str, object], ...] = ()
    placement_candidates: tuple[str, ...] = ()
    placement_slo_margins: tuple[float, ...] = ()
    served_slo_margins: tuple[float, ...] = ()
    refine_policy: str = ""
    verify_s: float = 30.0
    interference_aware: bool = False
    reroute_rejected: bool = False
    growth_pages: int = 0
    summary: str = ""

    @property
    def own_policy(self) -> str:
        """The scheme's own placement policy: its first candidate, else `placement_policy`."""
        return self.placement_candidates[0] if self.placement_candidates else self.placement_policy

    def make_policy(self) -> Policy:
        """The local policy, built with `policy_options` (keyword arguments)."""
        return POLICIES[self.policy](**dict(self.policy_options))


SCHEMES: Mapping[str, SchemeSpec] = {
    "static": SchemeSpec(
        "static", "static", "fcfs", True, "load", "fineserve",
        summary="one vLLM per model, KV partition sized by expected demand, FCFS",
    ),
    "muxserve": SchemeSpec(
        "muxserve", "uniform", "fcfs", False, "load", "muxserve", reserve="rate", lanes=True,
        summary="one unit scheduler, uniform KV blocks, rate-proportional block quotas, "
        "each LLM's jobs dispatched on their own (lanes)",
    ),
    "prism": SchemeSpec(
        "prism", "paged_vmm", "prism", True, "pressure", "prism", map_cost_s=20e-6,
        summary="per-model engines, 2 MiB pages mapped on demand, KV-pressure placement",
    ),
    "fineserve": SchemeSpec(
        "fineserve", "slab", "saab", False, "mme", lanes=True,
        summary="KV Slab, slab-aware (MME) placement, SAAB, one step lane per model",
    ),
    "fineserve_plus": SchemeSpec(
        "fineserve_plus", "slab", "slack", False, "mme", reserve="floor", lanes=True,
        policy_options=(("tpot_budget", True), ("fewest_misses", True), ("lookahead", True)),
        placement_candidates=("fineserve", "prism"), placement_slo_margins=(0.5,),
        served_slo_margins=(0.5,), refine_policy="fineserve_lean",
        interference_aware=True, growth_pages=4, reroute_rejected=True, target_slabs=512,
        summary="KV Slab (finer slabs) + slack ordering, TPOT-aware budget, MME arbitration "
        "with floors, lanes, "
        "interference-aware and look-ahead admission, decode-growth headroom, "
        "rejections re-routed to the model's other instances, simulation-verified placement",
    ),
}  # fmt: skip


def get_scheme(name: str) -> SchemeSpec:
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown scheme {name!r}; choose one of {sorted(SCHEMES)}") from None


def served_model(m: SimModel) -> ServedModel:
    return ServedModel(m.name, m.mtype.key, m.mtype.max_model_len, m.ttft_slo_s, m.tpot_slo_s)


def _model_kvs(scheme: SchemeSpec, models: Sequence[SimModel], arena: int) -> list[ModelKV]:
    """KV specs with the scheme's reserves; `demand_weight` = rate x KV bytes per token."""
    total_rate = sum(m.rate for m in models) or 1.0
    out = []
    for m in models:
        fmt = m.mtype.kv
        reserve = 0
        if scheme.reserve == "rate" and len(models) > 1:
            reserve = int(arena * (m.rate / total_rate) * 0.999)
        elif scheme.reserve == "floor" and len(models) > 1:
            reserve = min(arena // (2 * len(models)), scheme.floor_tokens * fmt.bytes_per_token)
        weight = max(m.rate, 1e-6) * fmt.bytes_per_token
        out.append(ModelKV(m.name, fmt, reserve_bytes=reserve, demand_weight=weight))
    return out


def slab_bytes_for(kvs: Sequence[ModelKV], arena_bytes: int, target_slabs: int) -> int:
    """A slab that is a multiple of the co-located page sizes' common multiple (no edge loss)
    when that is small, sized so the arena holds about `target_slabs` slabs (fewer, larger
    slabs keep the allocator's per-slab bookkeeping cheap); else the allocator's own choice."""
    sizes = [k.fmt.page_bytes for k in kvs]
    base = choose_slab_bytes(sizes, arena_bytes)
    return base * max(1, arena_bytes // (base * target_slabs))


def build_group_engines(
    scheme: SchemeSpec,
    models: Sequence[SimModel],
    arena_bytes: int,
    cost_model: CostModel,
    interference: InterferenceModel | None = None,
) -> tuple[KVAllocator, list[tuple[Engine, list[str]]]]:
    """The shared allocator of a GPU group and its engines, each with the models it serves.

    All engines of a group share one allocator (one arena): per-model engines only ever touch
    their own model's pages. The engines' executors are never called by the simulator (it
    costs batches itself); a `SimExecutor` is attached so each engine also works stand-alone.
    `interference` reaches the local schedulers of an `interference_aware` scheme only.
    """
    kvs = _model_kvs(scheme, models, arena_bytes)
    options: dict[str, object] = {}
    if scheme.memory == "paged_vmm":
        options["map_cost_s"] = scheme.map_cost_s
    elif scheme.memory == "slab":
        options["slab_bytes"] = slab_bytes_for(kvs, arena_bytes, scheme.target_slabs)
    allocator = make_allocator(scheme.memory, arena_bytes, kvs, **options)
    parts = [[m] for m in models] if scheme.engine_per_model else [list(models)]
    engines = []
    for part in parts:
        # a shared engine runs its models' batches side by side: each keeps a full budget
        # (with lanes the budget applies to each lane's plan, one model each)
        budget = scheme.token_budget * (1 if scheme.lanes else len(part))
        config = SchedulerConfig(
            token_budget=budget,
            max_running=scheme.max_running,
            growth_pages_per_running=scheme.growth_pages,
        )
        scheduler = LocalScheduler(
            [served_model(m) for m in part], allocator, cost_model, scheme.make_policy(), config,
            interference if scheme.interference_aware else None,
        )  # fmt: skip
        engine = Engine(scheduler, SimExecutor(cost_model or LinearCostModel()))
        engines.append((engine, [m.name for m in part]))
    return allocator, engines
