"""Predicted SLO attainment and goodput of a placement: a queueing approximation.

Per replica ``i`` with rate share ``l_i`` (the model's rate split evenly over its replicas), on
every GPU ``g`` of its group (the worst GPU counts):

1. **Load.** ``u_i = l_i * work_i * slow_i``: GPU seconds per request at full batching (see
   :mod:`.sizing`) times the interference slowdown of sharing SMs with the other instances on
   the GPU (``InterferenceModel.share_slowdown`` at share ``1 / n_eff``, ``n_eff = 1 + sum of
   the others' busy shares``). ``U_g = sum u``. When ``U_g > 1`` only ``1 / U_g`` of requests
   are served at all.
2. **TPOT.** The others take ``f = U_g - u_i`` of the GPU and the replica's own prefill
   ``l_i pf_i``; the replica decodes in ``avail = 1 - f - l_i pf_i``. Its batch ``b`` is the
   smallest that keeps up (``b avail / (O tau(b) slow) >= l_i``, capped at ``max_batch``; if
   even the cap cannot, the served share drops in proportion) and its TPOT is
   ``tau(b) slow / avail``. Attainment factor 1 within the TPOT SLO, else ``(slo/TPOT)^4``.
3. **TTFT.** Prefills queue as M/M/1 on the time decode leaves: ``avail_p = 1 - D_g`` (``D_g``
   the GPU's decode share), mean service ``s = (sum l pf slow / sum l) / avail_p``, load
   ``rho = sum l pf slow / avail_p`` (capped at 0.99). With the replica's own prefill
   ``p = pf slow / avail_p``: ``P(TTFT <= slo) = 1 - rho exp(-(1 - rho)(slo - p)/s)`` (0 if
   ``p > slo``).
4. **Memory.** KV need = ``b`` sequences of ``P + O`` tokens in whole pages (under the
   ``uniform`` scheme every page is padded to the GPU's largest page, as in MuxServe); if the
   GPU's KV room (memory - reserve - weights) is smaller than the sum of needs, attainment is
   scaled by room / need.

5. **Overload, counted once.** If a replica's busiest GPU has ``U_g > util_cap``, it serves
   ``util_cap / U_g`` of its requests (the rest count as misses) and steps 2-4 use the admitted
   rate ``l_i util_cap / U_g``: the stable operating point. Without this the same excess was
   charged three or four times (served share, TTFT queue at rho ~ 1, batch at the cap, KV need
   of the capped batch), so any overloaded GPU predicted ~0 whatever the placement.

Replica attainment = served x TPOT factor x TTFT factor x memory factor; a model's attainment is
the rate-weighted mean of its replicas (0 when unplaced, 1 at rate 0); the placement's is the
rate-weighted mean over models and goodput = sum of rate x attainment. Pure arithmetic over the
cost model: deterministic, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from fineserve.costmodel.base import InterferenceModel
from fineserve.scheduler.placement.problem import PlacementProblem
from fineserve.scheduler.placement.sizing import Sizer
from fineserve.scheduler.placement.types import (
    GpuUsage,
    InstancePlacement,
    Placement,
    Prediction,
)

MIN_AVAIL = 0.05


@dataclass
class _Load:
    """Working figures of one replica during a prediction."""

    inst: InstancePlacement
    pf: float  # solo prefill seconds
    u0: float  # busy share without interference
    slow: float = 1.0
    u: float = 0.0
    batch: int = 1
    factor: float = 1.0  # attainment before the memory factor


def _interference(problem: PlacementProblem) -> InterferenceModel:
    model = getattr(problem.cost_model, "interference", None)
    return model if isinstance(model, InterferenceModel) else InterferenceModel()


def _by_gpu(loads: Sequence[_Load]) -> dict[str, list[_Load]]:
    out: dict[str, list[_Load]] = {}
    for ld in loads:
        for g in ld.inst.gpus:
            out.setdefault(g, []).append(ld)
    return out


def _apply_interference(
    loads: Sequence[_Load], by_gpu: dict[str, list[_Load]], im: InterferenceModel
) -> None:
    for ld in loads:
        slow = 1.0
        for g in ld.inst.gpus:
            n_eff = 1.0 + sum(min(1.0, o.u0) for o in by_gpu[g] if o is not ld)
            frac = ld.inst.rate * ld.pf / ld.u0 if ld.u0 > 0 else 0.0
            slow = max(slow, im.share_slowdown(1.0 / n_eff, frac))
        ld.slow, ld.u = slow, ld.u0 * slow


def _decode_factor(sizer: Sizer, ld: _Load, util: float) -> float:
    """Served share x TPOT factor for replica ``ld`` on a GPU with busy share ``util``."""
    m, inst = sizer.model(ld.inst.model), ld.inst
    if inst.rate <= 0:
        ld.batch = 1
        return 1.0
    served = min(1.0, 1.0 / util) if util > 0 else 1.0
    others = min(0.95, max(0.0, util - ld.u))
    avail = max(MIN_AVAIL, 1.0 - others - inst.rate * ld.pf * ld.slow)
    cap = max(1, sizer.problem.options.max_batch)

    def rate_at(b: int) -> float:
        return b * avail / (m.output_len * sizer.tau(m, inst.tp, b) * ld.slow)

    if rate_at(cap) < inst.rate:
        ld.batch = cap
        served *= rate_at(cap) / inst.rate
    else:
        lo, hi = 1, cap
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if rate_at(mid) >= inst.rate else (mid + 1, hi)
        ld.batch = lo
    tpot = sizer.tau(m, inst.tp, ld.batch) * ld.slow / avail
    slo = m.tpot_slo_s
    return served * (1.0 if slo is None or tpot <= slo else (slo / tpot) ** 4)


def _ttft_factor(sizer: Sizer, ld: _Load, here: Sequence[_Load], util: float) -> float:
    m = sizer.model(ld.inst.model)
    prefill_load = sum(o.inst.rate * o.pf * o.slow for o in here)
    lam = sum(o.inst.rate for o in here)
    avail = max(MIN_AVAIL, 1.0 - (util - prefill_load))
    own = ld.pf * ld.slow / avail
    if own > m.ttft_slo_s:
        return 0.0
    if lam <= 0 or prefill_load <= 0:
        return 1.0
    mean_s = prefill_load / lam / avail
    rho = min(0.99, prefill_load / avail)
    return 1.0 - rho * math.exp(-(1.0 - rho) * (m.ttft_slo_s - own) / mean_s)


def _kv_need(sizer: Sizer, ld: _Load, max_page: int, kv_scheme: str) -> int:
    m = sizer.model(ld.inst.model)
    fmt = m.kv_formats[ld.inst.tp]
    if kv_scheme != "uniform":
        return ld.batch * m.seq_kv_bytes(ld.inst.tp)
    pages = -(-(m.prompt_len + m.output_len) // fmt.tokens_per_page)
    return ld.batch * pages * max_page


def _gpu_usage(
    sizer: Sizer, by_gpu: dict[str, list[_Load]], util: dict[str, float], kv_scheme: str
) -> dict[str, GpuUsage]:
    cluster = sizer.problem.cluster
    usage: dict[str, GpuUsage] = {}
    for g in cluster.gpu_ids():
        here = by_gpu.get(g, [])
        weights = sum(sizer.model(o.inst.model).weight_bytes_per_gpu(o.inst.tp) for o in here)
        pages = [sizer.model(o.inst.model).kv_formats[o.inst.tp].page_bytes for o in here]
        need = sum(_kv_need(sizer, o, max(pages, default=0), kv_scheme) for o in here)
        usage[g] = GpuUsage(
            cluster.gpu_memory_bytes, cluster.reserve_bytes + weights, need, util.get(g, 0.0)
        )
    return usage


def predict(
    problem: PlacementProblem,
    instances: Sequence[InstancePlacement],
    *,
    kv_scheme: str = "slab",
    sizer: Sizer | None = None,
    keep_rates: bool = False,
) -> tuple[Prediction, dict[str, GpuUsage]]:
    """Predicted attainment of ``instances`` (see the module docstring) and per-GPU usage.

    Replica rates are the model's rate split evenly over its replicas, unless ``keep_rates``
    (then each instance's own ``rate`` is used and a model's attainment is over the given
    replicas only: for scoring part of a placement).
    """
    sizer = sizer or Sizer(problem)
    if not keep_rates:
        instances = with_rates(problem, instances)
    loads = [_Load(i, sizer.prefill(sizer.model(i.model), i.tp), 0.0) for i in instances]
    for ld in loads:
        ld.u0 = ld.inst.rate * sizer.work(sizer.model(ld.inst.model), ld.inst.tp)
    by_gpu = _by_gpu(loads)
    _apply_interference(loads, by_gpu, _interference(problem))
    util = {g: sum(o.u for o in here) for g, here in by_gpu.items()}
    offered = {id(ld): ld.inst.rate for ld in loads}
    shed = _admit(problem, loads, util)
    if shed:
        util = {g: sum(o.u for o in here) for g, here in by_gpu.items()}
    for ld in loads:
        worst = max(ld.inst.gpus, key=lambda g: util[g])
        ld.factor = _decode_factor(sizer, ld, util[worst]) * shed.get(id(ld), 1.0)
        ld.factor *= min(_ttft_factor(sizer, ld, by_gpu[g], util[g]) for g in ld.inst.gpus)
    usage = _gpu_usage(sizer, by_gpu, util, kv_scheme)
    mem = {
        g: 1.0 if u.kv_need_bytes <= 0 else
        max(0.0, min(1.0, (u.memory_bytes - u.used_bytes) / u.kv_need_bytes))
        for g, u in usage.items()
    }  # fmt: skip
    per_model: dict[str, float] = {}
    for m in problem.models:
        mine = [ld for ld in loads if ld.inst.model == m.name]
        if not mine:
            per_model[m.name] = 0.0
        elif m.rate <= 0:
            per_model[m.name] = 1.0
        else:
            served = sum(
                offered[id(ld)] * ld.factor * min(mem[g] for g in ld.inst.gpus) for ld in mine
            )
            asked = sum(offered[id(ld)] for ld in mine)
            per_model[m.name] = min(1.0, served / asked) if asked > 0 else 1.0
    total = sum(m.rate for m in problem.models)
    goodput = sum(m.rate * per_model[m.name] for m in problem.models)
    overall = goodput / total if total > 0 else 1.0
    return Prediction(overall, goodput, per_model), usage


def _admit(
    problem: PlacementProblem, loads: Sequence[_Load], util: dict[str, float]
) -> dict[int, float]:
    """Overload: count the excess once. A replica whose busiest GPU has busy share ``U`` above
    ``util_cap`` serves ``util_cap / U`` of its requests (the rest miss their SLO: the served
    share), and the queueing, TPOT and memory factors are computed at that admitted rate, the
    stable operating point, rather than at the offered rate (where the TTFT queue, the batch
    cap and the KV need would each charge the same excess again). Returns {id(load): served
    share} for the replicas it scaled (their rate and busy share are scaled in place)."""
    cap = problem.options.util_cap
    shed: dict[int, float] = {}
    for ld in loads:
        worst = max(util[g] for g in ld.inst.gpus)
        if worst > cap:
            s = cap / worst
            shed[id(ld)] = s
            ld.inst = replace(ld.inst, rate=ld.inst.rate * s)
            ld.u0 *= s
            ld.u *= s
    return shed


def with_rates(
    problem: PlacementProblem, instances: Sequence[InstancePlacement]
) -> list[InstancePlacement]:
    """``instances`` with each replica's rate = its model's rate / the model's replica count."""
    count: dict[str, int] = {}
    for i in instances:
        count[i.model] = count.get(i.model, 0) + 1
    rates = {m.name: m.rate for m in problem.models}
    return [replace(i, rate=rates[i.model] / count[i.model]) for i in instances]


def solo_attainment(sizer: Sizer, model: str, tp: int, rate: float) -> float:
    """Predicted attainment of one replica alone on an empty group (memory aside)."""
    m = sizer.model(model)
    gpus = sizer.problem.cluster.groups(tp)[0]
    inst = InstancePlacement(model, tp, 0, gpus, rate)
    ld = _Load(inst, sizer.prefill(m, tp), rate * sizer.work(m, tp))
    ld.u = ld.u0
    return _decode_factor(sizer, ld, ld.u) * _ttft_factor(sizer, ld, [ld], ld.u)


def evaluate(
    problem: PlacementProblem,
    policy: str,
    instances: Sequence[InstancePlacement],
    *,
    kv_scheme: str = "slab",
    sizer: Sizer | None = None,
) -> Placement:
    """Wrap ``instances`` into a :class:`Placement` with its prediction and GPU usage."""
    instances = with_rates(problem, instances)
    prediction, usage = predict(problem, instances, kv_scheme=kv_scheme, sizer=sizer)
    placed = {i.model for i in instances}
    unplaced = tuple(m.name for m in problem.models if m.name not in placed)
    ordered = tuple(sorted(instances, key=lambda i: (i.model, i.replica)))
    return Placement(policy, ordered, usage, prediction, kv_scheme, unplaced)
