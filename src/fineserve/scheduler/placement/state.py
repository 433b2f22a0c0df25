"""Bookkeeping while a policy builds a placement: bytes, load and KV mix per GPU.

A :class:`ClusterState` lives for one policy call (never shared). Invariant: for every GPU,
``weights + kv <= usable_bytes`` whenever a policy added work through :meth:`fits` first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fineserve.scheduler.placement.problem import PlacementProblem
from fineserve.scheduler.placement.sizing import Option, Sizer
from fineserve.scheduler.placement.types import InstancePlacement

Group = tuple[str, ...]


class ClusterState:
    """Per-GPU weights, KV need, busy share and page mix of the instances added so far."""

    def __init__(self, problem: PlacementProblem, sizer: Sizer) -> None:
        self.problem, self.sizer = problem, sizer
        ids = problem.cluster.gpu_ids()
        self.weights = dict.fromkeys(ids, 0)
        self.kv = dict.fromkeys(ids, 0)
        self.util = dict.fromkeys(ids, 0.0)
        self.pressure = dict.fromkeys(ids, 0.0)  # sum of rate / TTFT SLO (Prism)
        self.mix: dict[str, list[tuple[int, float]]] = {g: [] for g in ids}  # (page, rate)
        self.instances: list[InstancePlacement] = []

    def free_bytes(self, gpu: str) -> int:
        return self.problem.cluster.usable_bytes - self.weights[gpu] - self.kv[gpu]

    def fits(self, opt: Option, group: Group, *, check_util: bool = True) -> bool:
        """Whether one replica of ``opt`` fits on ``group`` (memory, and busy share if asked)."""
        cap = self.problem.options.util_cap
        return all(
            self.free_bytes(g) >= opt.mem_per_gpu
            and (not check_util or self.util[g] + opt.util <= cap + 1e-9)
            for g in group
        )

    def empty(self, group: Group) -> bool:
        return all(not self.mix[g] and self.weights[g] == 0 for g in group)

    def add(self, opt: Option, group: Group, replica: int) -> None:
        m = self.sizer.model(opt.model)
        page = m.kv_formats[opt.tp].page_bytes
        for g in group:
            self.weights[g] += opt.weight_bytes_per_gpu
            self.kv[g] += opt.kv_need_bytes
            self.util[g] += opt.util
            self.pressure[g] += opt.rate_per_replica / m.ttft_slo_s
            self.mix[g].append((page, opt.rate_per_replica))
        self.instances.append(
            InstancePlacement(
                opt.model,
                opt.tp,
                replica,
                group,
                opt.rate_per_replica,
                opt.min_batch,
                opt.max_batch,
            )
        )

    def mme_pages(self, opt: Option, group: Group) -> float:
        """FineServe's score: average-size KV pages the leftover memory holds after adding.

        The average page is the rate-weighted mean page size of the precision mix on the GPU
        with the new model included; the group's worst GPU counts.
        """
        m = self.sizer.model(opt.model)
        new = (m.kv_formats[opt.tp].page_bytes, max(opt.rate_per_replica, 1e-9))
        score = float("inf")
        for g in group:
            mix = [*self.mix[g], new]
            weight = sum(r for _, r in mix)
            avg_page = sum(p * r for p, r in mix) / weight
            score = min(score, (self.free_bytes(g) - opt.mem_per_gpu) / avg_page)
        return score

    def _snapshot(self) -> tuple[object, ...]:
        return (
            dict(self.weights), dict(self.kv), dict(self.util), dict(self.pressure),
            {g: list(v) for g, v in self.mix.items()}, list(self.instances),
        )  # fmt: skip

    def _restore(self, snap: tuple[object, ...]) -> None:
        (self.weights, self.kv, self.util, self.pressure, self.mix, self.instances) = snap  # type: ignore[assignment]

    def place_replicas(
        self,
        opt: Option,
        score: Callable[[Option, Group], float],
        *,
        check_util: bool = True,
        only_empty: bool = False,
        accept: Callable[[ClusterState, Group], bool] | None = None,
    ) -> bool:
        """Put all replicas of ``opt`` on distinct groups, each on the best-scoring one that fits
        (and, if given, that ``accept`` approves once the replica is added).

        All or nothing: on failure the state is as before and False is returned.
        """
        snap = self._snapshot()
        used: list[Group] = []
        for replica in range(opt.replicas):
            candidates = sorted(
                (
                    grp
                    for grp in self.problem.cluster.groups(opt.tp)
                    if grp not in used
                    and self.fits(opt, grp, check_util=check_util)
                    and (not only_empty or self.empty(grp))
                ),
                key=lambda grp: -score(opt, grp),
            )
            for grp in candidates:
                inner = self._snapshot()
                self.add(opt, grp, replica)
                if accept is None or accept(self, grp):
                    used.append(grp)
                    break
                self._restore(inner)
            else:
                self._restore(snap)
                return False
        return True

    def place_one(
        self,
        opt: Option,
        replica: int,
        score: Callable[[Option, Group], float],
        *,
        exclude: Iterable[Group] = (),
        accept: Callable[[ClusterState, Group], bool] | None = None,
        check_util: bool = True,
    ) -> Group | None:
        """Add one replica of ``opt`` (numbered ``replica``) to the best-scoring fitting group
        not in ``exclude`` that ``accept`` approves; the group, or None (state unchanged)."""
        banned = set(exclude)
        candidates = sorted(
            (
                grp
                for grp in self.problem.cluster.groups(opt.tp)
                if grp not in banned and self.fits(opt, grp, check_util=check_util)
            ),
            key=lambda grp: -score(opt, grp),
        )
        for grp in candidates:
            inner = self._snapshot()
            self.add(opt, grp, replica)
            if accept is None or accept(self, grp):
                return grp
            self._restore(inner)
        return None

    def groups_of(self, model: str) -> list[Group]:
        return [i.gpus for i in self.instances if i.model == model]

    def local_attainment_ok(self, group: Group) -> bool:
        """Whether every replica on ``group``'s GPUs keeps the target predicted attainment.

        Predicts only the instances sharing a GPU with ``group`` (their rates as placed).
        """
        from fineserve.scheduler.placement.predict import predict

        gpus = set(group)
        near = [i for i in self.instances if gpus & set(i.gpus)]
        pred, _ = predict(self.problem, near, sizer=self.sizer, keep_rates=True)
        target = self.problem.options.target_attainment
        return all(pred.per_model[i.model] >= target for i in near)


def fallback_options(sizer: Sizer, opts: Iterable[Option], extra: int = 2) -> list[Option]:
    """``opts`` followed by the same TP degrees with up to ``extra`` more replicas each."""
    base = list(opts)
    more: list[Option] = []
    groups = sizer.problem.cluster.groups
    for o in base:
        m = sizer.model(o.model)
        for r in range(o.replicas + 1, min(o.replicas + extra, len(groups(o.tp))) + 1):
            alt = sizer.option(m, o.tp, r)
            if alt is not None:
                more.append(alt)
    return base + more
