"""Sizing one model at one TP degree and replica count: batch bounds, GPU share, memory, cost.

For a model with mean prompt ``P`` and output ``O`` tokens, at TP degree ``tp``:

- ``pf`` = prefill time of ``P`` tokens; ``tau(b)`` = decode step time of ``b`` sequences at the
  mean decode context ``P + O/2`` (both from the cost model, alone on the group);
- ``b_max`` = the largest batch with ``tau(b) <= TPOT SLO`` whose KV (whole pages of ``P + O``
  tokens per sequence) fits beside the weights on an empty group, at most ``max_batch``;
- ``b_min`` = the smallest batch that sustains the replica's rate ``r = rate / replicas`` alone:
  ``b (1 - r pf) / (O tau(b)) >= r`` (decode throughput in the time prefill leaves);
- ``work`` = GPU-group seconds per request at full batching, ``pf + O tau(b_max) / b_max``, so a
  replica needs a busy share ``util = r * work`` of its GPUs when they are shared;
- ``kv_need`` = KV bytes per rank for ``min(b_max, 2 b_min)`` sequences (the batch grows when
  the GPU is shared), and ``cost = replicas * (tp * max(util, memory share) + 0.05 (tp - 1))``
  in GPU equivalents (the small per-GPU term makes the smaller TP degree win near-ties: fewer
  all-reduces and more freedom to co-locate).

An option is feasible when ``pf <= TTFT SLO``, ``b_min <= b_max`` and its predicted attainment
alone reaches ``options.target_attainment``. Nothing here reads a clock or imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from fineserve.costmodel.base import BatchShape, CostModel
from fineserve.scheduler.placement.problem import InfeasibleError, ModelDemand, PlacementProblem

TP_PENALTY = 0.05


@dataclass(frozen=True)
class Option:
    """A feasible way to serve one model: TP degree, replicas, and each replica's demands."""

    model: str
    tp: int
    replicas: int
    min_batch: int
    max_batch: int
    rate_per_replica: float
    util: float  # busy share each GPU of a replica's group needs
    weight_bytes_per_gpu: int
    kv_need_bytes: int  # per GPU of the group
    cost: float

    @property
    def mem_per_gpu(self) -> int:
        return self.weight_bytes_per_gpu + self.kv_need_bytes


class Sizer:
    """Cost-model queries for one problem, memoised per instance (not shared between problems)."""

    def __init__(self, problem: PlacementProblem) -> None:
        self.problem = problem
        self.cost_model: CostModel = problem.cost_model
        self._tau: dict[tuple[str, int, int], float] = {}
        self._pf: dict[tuple[str, int], float] = {}
        self._bmax: dict[tuple[str, int], int] = {}
        self._models = {m.name: m for m in problem.models}

    def model(self, name: str) -> ModelDemand:
        return self._models[name]

    def prefill(self, m: ModelDemand, tp: int) -> float:
        k = (m.name, tp)
        if k not in self._pf:
            batch = BatchShape(prefill=((m.prompt_len, 0),))
            self._pf[k] = self.cost_model.step_time(m.key(tp), batch)
        return self._pf[k]

    def tau(self, m: ModelDemand, tp: int, b: int) -> float:
        k = (m.name, tp, b)
        if k not in self._tau:
            ctx = m.prompt_len + m.output_len // 2
            self._tau[k] = self.cost_model.step_time(
                m.key(tp), BatchShape(decode_context=(ctx,) * b)
            )
        return self._tau[k]

    def mem_batch(self, m: ModelDemand, tp: int) -> int:
        """Sequences whose KV fits beside the weights on an empty group (may be <= 0)."""
        free = self.problem.cluster.usable_bytes - m.weight_bytes_per_gpu(tp)
        return free // m.seq_kv_bytes(tp) if free > 0 else 0

    def max_batch(self, m: ModelDemand, tp: int) -> int:
        """``b_max`` of the module docstring (0 when even one sequence cannot meet it)."""
        k = (m.name, tp)
        if k not in self._bmax:
            cap = min(self.problem.options.max_batch, self.mem_batch(m, tp))
            slo = m.tpot_slo_s
            self._bmax[k] = (
                cap if slo is None else self._last_true(cap, lambda b: self.tau(m, tp, b) <= slo)
            )
        return self._bmax[k]

    def min_batch(self, m: ModelDemand, tp: int, rate: float, cap: int) -> int | None:
        """``b_min`` for ``rate`` within ``[1, cap]``; None when no batch there sustains it."""
        pf = self.prefill(m, tp)
        if rate * pf >= 1.0:
            return None

        def sustains(b: int) -> bool:
            return b * (1.0 - rate * pf) >= rate * m.output_len * self.tau(m, tp, b)

        if cap < 1 or not sustains(cap):
            return None
        lo, hi = 1, cap
        while lo < hi:
            mid = (lo + hi) // 2
            if sustains(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def work(self, m: ModelDemand, tp: int) -> float:
        """GPU-group seconds per request at full batching (``pf + O tau(b_max)/b_max``)."""
        b = max(1, self.max_batch(m, tp))
        return self.prefill(m, tp) + m.output_len * self.tau(m, tp, b) / b

    @staticmethod
    def _last_true(cap: int, ok: object) -> int:
        """Largest b in [1, cap] with ok(b) for a predicate true on a prefix; 0 if none."""
        assert callable(ok)
        if cap < 1 or not ok(1):
            return 0
        lo, hi = 1, cap
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if ok(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def option(self, m: ModelDemand, tp: int, replicas: int) -> Option | None:
        """The option (tp, replicas) for ``m``, or None when it is infeasible."""
        if self.prefill(m, tp) > m.ttft_slo_s:
            return None
        b_max = self.max_batch(m, tp)
        rate = m.rate / replicas
        b_min = self.min_batch(m, tp, rate, b_max)
        if b_min is None:
            return None
        util = rate * self.work(m, tp)
        if util > self.problem.options.util_cap:
            return None
        from fineserve.scheduler.placement.predict import solo_attainment

        if (
            rate > 0
            and solo_attainment(self, m.name, tp, rate) < self.problem.options.target_attainment
        ):
            return None
        kv = min(b_max, 2 * b_min) * m.seq_kv_bytes(tp)
        weights = m.weight_bytes_per_gpu(tp)
        share = (weights + kv) / self.problem.cluster.usable_bytes
        return Option(
            m.name, tp, replicas, b_min, b_max, rate, util, weights, kv,
            cost=replicas * (tp * max(util, share) + TP_PENALTY * (tp - 1)),
        )  # fmt: skip

    def options(self, m: ModelDemand) -> list[Option]:
        """Feasible options, cheapest first: per TP degree the fewest replicas that work.

        Raises :class:`InfeasibleError` naming the reason when no TP degree works.
        """
        found: list[Option] = []
        for tp in m.tp_options:
            groups = len(self.problem.cluster.groups(tp))
            for r in range(1, min(self.problem.options.max_replicas, groups) + 1):
                opt = self.option(m, tp, r)
                if opt is not None:
                    found.append(opt)
                    break
        if not found:
            raise InfeasibleError(self.explain(m))
        return sorted(found, key=lambda o: (o.cost, o.tp))

    def explain(self, m: ModelDemand) -> str:
        """Why no option of ``m`` is feasible, in one readable sentence per TP degree."""
        cluster = self.problem.cluster
        reasons: list[str] = []
        for tp in m.tp_options:
            if not cluster.groups(tp):
                reasons.append(
                    f"tp={tp}: no group of {tp} GPUs in a {cluster.gpus_per_node}-GPU node"
                )
            elif self.mem_batch(m, tp) < 1:
                need = (m.weight_bytes_per_gpu(tp) + m.seq_kv_bytes(tp)) / 2**30
                have = cluster.usable_bytes / 2**30
                reasons.append(f"tp={tp}: needs {need:.1f} GiB per GPU, a GPU has {have:.1f} GiB")
            elif self.prefill(m, tp) > m.ttft_slo_s:
                reasons.append(
                    f"tp={tp}: prefill alone takes {self.prefill(m, tp) * 1e3:.0f} ms "
                    f"> TTFT SLO {m.ttft_slo_s * 1e3:.0f} ms"
                )
            elif self.max_batch(m, tp) < 1:
                reasons.append(f"tp={tp}: one decode step exceeds the TPOT SLO")
            else:
                cap = self._capacity(m, tp)
                reasons.append(
                    f"tp={tp}: at most {cap:.2f} req/s within SLO with "
                    f"{len(cluster.groups(tp))} replicas"
                )
        return (
            f"model {m.name!r} ({m.weight_bytes / 2**30:.1f} GiB, {m.rate:g} req/s) "
            "cannot be placed: " + "; ".join(reasons)
        )

    def _capacity(self, m: ModelDemand, tp: int) -> float:
        """Rate the cluster's groups of ``tp`` GPUs could sustain for ``m`` (for messages)."""
        groups = min(self.problem.options.max_replicas, len(self.problem.cluster.groups(tp)))
        per = self.problem.options.util_cap / max(self.work(m, tp), 1e-12)
        return groups * per
