"""Co-located execution on GPUs: processor sharing with the fitted interference model.

Every model batch that runs is an *activity* with `work` seconds of solo time (the cost model's
step time for that batch alone on the GPUs) and a prefill fraction. While `n` activities run on
the same GPU group at once, each progresses at rate `1 / slowdown`, where
`slowdown = InterferenceModel.colocated_slowdown(prefill_fraction, n)` = `1 + k (n - 1)` with
`k` interpolated between the prefill and decode coefficients fitted from the H100 MPS rows
(each of n concurrent kernels streams is taken to hold an equal 1/n share of the SMs). Rates
are re-evaluated whenever an activity starts or ends, so the slowdown follows the concurrency
actually present at every instant (not only at step start).

A `GpuGroup` is a *domain*: GPU sets that overlap (a TP=1 instance on one GPU of a TP=4
group) form one domain, and an activity's `n` counts the activities whose GPU sets intersect its
own (itself included); activities on disjoint GPUs of one domain do not slow each other.

A multi-step plan is one activity with `marks`: the cumulative work at the end of each of its
iterations (the last is its whole work). `cut` ends such an activity at its next mark (the
iteration it is in), so the simulator can stop the plan there when an event needs the engine.

Invariants: `remaining >= 0` for every activity; `advance(t)` is called with non-decreasing t;
`next_finish()` is the earliest completion under the current concurrency.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fineserve.costmodel.base import InterferenceModel

EPS = 1e-12


@dataclass(slots=True, eq=False)
class Activity:
    """One batch running on the group; `owner` is whatever the simulator attaches (its step)."""

    remaining: float
    prefill_fraction: float
    owner: object
    gpus: frozenset[int] = frozenset()
    rate: float = 1.0
    marks: list[float] | None = None  # cumulative work at each iteration's end (multi-step)


@dataclass(slots=True)
class GpuGroup:
    """The activities running on one GPU set, and their interference."""

    gpus: tuple[int, ...]
    interference: InterferenceModel
    active: list[Activity] = field(default_factory=list)
    last_t: float = 0.0
    version: int = 0
    busy_s: float = 0.0  # time with at least one activity (utilisation)
    single_set: bool = True  # every activity runs on all of `gpus` (no overlap counting needed)

    def advance(self, now: float) -> None:
        """Move every activity forward to `now` at its current rate."""
        dt = now - self.last_t
        if dt > 0 and self.active:
            self.busy_s += dt
            for a in self.active:
                a.remaining = max(0.0, a.remaining - dt * a.rate)
        self.last_t = max(self.last_t, now)

    def add(self, activity: Activity) -> None:
        """Start an activity (call `advance(now)` first, `rerate()` after the last add)."""
        self.active.append(activity)

    def pop_finished(self) -> list[Activity]:
        """Remove and return the activities with no work left."""
        done = [a for a in self.active if a.remaining <= EPS]
        if done:
            self.active = [a for a in self.active if a.remaining > EPS]
        return done

    def cut(self, activity: Activity) -> int:
        """End a multi-step `activity` at the end of the iteration it is in (call `advance(now)`
        first, `rerate()` after); returns the iterations it will have run."""
        marks = activity.marks
        assert marks is not None, "only a multi-step activity has iterations to cut"
        done = marks[-1] - activity.remaining
        for j, mark in enumerate(marks):
            if mark > done - EPS:  # iteration j is in progress (or ends right now)
                activity.remaining = max(mark - done, 0.0)
                activity.marks = marks[: j + 1]
                return j + 1
        return len(marks)

    def rerate(self) -> None:
        """Recompute every activity's progress rate for the current concurrency."""
        active = self.active
        n = len(active)
        inter = self.interference
        pk, dk = inter.prefill_k, inter.decode_k
        overlap: dict[frozenset[int], int] = {}
        if not self.single_set and n > 1:
            # activities per distinct GPU set (a domain has few), then per set the count of
            # activities whose sets intersect it: O(n + sets^2) instead of O(n^2)
            per_set: dict[frozenset[int], int] = {}
            for a in active:
                per_set[a.gpus] = per_set.get(a.gpus, 0) + 1
            sets = list(per_set.items())
            for gs, _ in sets:
                c = 0  # integer counts: the same sum in any order (a loop: no generator)
                for hs, k in sets:
                    if not gs.isdisjoint(hs):
                        c += k
                overlap[gs] = c
        for a in active:
            if overlap:
                n = overlap[a.gpus]
            f = a.prefill_fraction
            a.rate = 1.0 / (1.0 + (f * pk + (1.0 - f) * dk) * (n - 1)) if n > 1 else 1.0
        self.version += 1

    def next_finish(self) -> float | None:
        """Absolute time of the next completion, or None when idle."""
        if not self.active:
            return None
        return self.last_t + min(a.remaining / a.rate for a in self.active)
