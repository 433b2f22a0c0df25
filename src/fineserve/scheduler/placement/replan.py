"""Online re-placement: when measured rates drift, the fewest moves that restore attainment.

Greedy best improvement: from the current placement under the measured rates, try each
candidate move and keep the one that raises predicted goodput most; repeat until every model's
predicted attainment reaches the target, no move helps, or ``max_moves`` were made. Candidates:

- ``add_replica``: one more replica of a model below target, on a group of its TP degree that
  does not host it and has room for its weights;
- ``move``: one replica of a model below target, or of any model sharing a GPU with one, to a
  group with room (the new replica loads and starts before the old one drains, so no request
  is dropped);
- ``remove_replica``: drop a replica of a model whose rate fell (only when that does not lower
  predicted goodput; frees memory for the others).

Each move states its cost: weight bytes to load on the new group and requests to drain from the
old one (in flight by Little's law: replica rate x its predicted time in system).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from fineserve.scheduler.placement.predict import evaluate, with_rates
from fineserve.scheduler.placement.problem import PlacementProblem
from fineserve.scheduler.placement.sizing import Sizer
from fineserve.scheduler.placement.types import InstancePlacement, Placement

MAX_TARGET_GROUPS = 8


@dataclass(frozen=True)
class Move:
    """One change to a placement and what it costs."""

    kind: str  # "add_replica" | "move" | "remove_replica"
    model: str
    tp: int
    from_gpus: tuple[str, ...] = ()
    to_gpus: tuple[str, ...] = ()
    weight_bytes_to_load: int = 0
    requests_to_drain: float = 0.0
    attainment_after: float = 0.0


@dataclass(frozen=True)
class ReplanProposal:
    """Moves in the order to apply them, the placement before (under measured rates) and after."""

    before: Placement
    after: Placement
    moves: tuple[Move, ...]


def _renumber(instances: Sequence[InstancePlacement]) -> list[InstancePlacement]:
    seen: dict[str, int] = {}
    out = []
    for i in instances:
        out.append(replace(i, replica=seen.get(i.model, 0)))
        seen[i.model] = seen.get(i.model, 0) + 1
    return out


def _in_flight(sizer: Sizer, inst: InstancePlacement) -> float:
    m = sizer.model(inst.model)
    b = max(1, inst.min_batch)
    latency = sizer.prefill(m, inst.tp) + m.output_len * sizer.tau(m, inst.tp, b)
    return inst.rate * latency


def _targets(sizer: Sizer, current: Placement, model: str, tp: int) -> list[tuple[str, ...]]:
    """Groups of ``tp`` GPUs without ``model`` with room for its weights, least loaded first."""
    m = sizer.model(model)
    hosting = {i.gpus for i in current.instances_of(model)}
    need = m.weight_bytes_per_gpu(tp) + m.seq_kv_bytes(tp)

    def room(grp: tuple[str, ...]) -> int:
        return min(current.gpus[g].memory_bytes - current.gpus[g].used_bytes for g in grp)

    groups = [
        grp for grp in sizer.problem.cluster.groups(tp) if grp not in hosting and room(grp) >= need
    ]
    groups.sort(key=lambda grp: (max(current.gpus[g].util for g in grp), -room(grp)))
    return groups[:MAX_TARGET_GROUPS]


def _candidates(
    sizer: Sizer, current: Placement, target: float
) -> Iterator[tuple[Move, list[InstancePlacement]]]:
    per_model = current.predicted.per_model
    bad = [m for m in sizer.problem.models if per_model.get(m.name, 0.0) < target]
    bad_gpus = {g for i in current.instances if i.model in {m.name for m in bad} for g in i.gpus}
    insts = list(current.instances)
    for m in bad:
        mine = current.instances_of(m.name)
        tps = sorted({i.tp for i in mine}) or [sizer.options(m)[0].tp]
        for tp in tps:
            for grp in _targets(sizer, current, m.name, tp):
                new = InstancePlacement(m.name, tp, len(mine), grp)
                yield Move("add_replica", m.name, tp, (), grp, m.weight_bytes), [*insts, new]
    for k, inst in enumerate(insts):
        if inst.model not in {m.name for m in bad} and not set(inst.gpus) & bad_gpus:
            continue
        drain = _in_flight(sizer, inst)
        for grp in _targets(sizer, current, inst.model, inst.tp):
            moved = [*insts[:k], replace(inst, gpus=grp), *insts[k + 1 :]]
            w = sizer.model(inst.model).weight_bytes
            yield Move("move", inst.model, inst.tp, inst.gpus, grp, w, drain), moved
    for k, inst in enumerate(insts):
        if len(current.instances_of(inst.model)) > 1:
            rest = [*insts[:k], *insts[k + 1 :]]
            yield (
                Move(
                    "remove_replica", inst.model, inst.tp, inst.gpus, (), 0, _in_flight(sizer, inst)
                ),
                rest,
            )


def replan(
    problem: PlacementProblem,
    current: Placement,
    measured_rates: Mapping[str, float],
    *,
    max_moves: int = 8,
    target: float | None = None,
) -> ReplanProposal:
    """Propose moves that restore predicted attainment under ``measured_rates`` (see module)."""
    drifted = problem.with_rates(measured_rates)
    sizer = Sizer(drifted)
    target = drifted.options.target_attainment if target is None else target
    scheme = current.kv_scheme
    start = with_rates(drifted, current.instances)
    before = evaluate(drifted, current.policy, start, kv_scheme=scheme, sizer=sizer)
    now, moves = before, []
    while len(moves) < max_moves and min(now.predicted.per_model.values(), default=1.0) < target:
        best: tuple[float, Move, Placement] | None = None
        for move, insts in _candidates(sizer, now, target):
            trial = evaluate(
                drifted, current.policy, _renumber(insts), kv_scheme=scheme, sizer=sizer
            )
            gain = trial.predicted.goodput - now.predicted.goodput
            if move.kind == "remove_replica" and gain < -1e-9:
                continue
            if best is None or gain > best[0]:
                best = (gain, move, trial)
        if best is None or best[0] <= 1e-9:
            break
        gain, move, now = best
        moves.append(replace(move, attainment_after=now.predicted.slo_attainment))
    return ReplanProposal(before, now, tuple(moves))
