"""Replays a workload through one KV memory scheme, one token per running request per step.

The step model (documented in `docs/memory.md`): a request is admitted when pages for its
prompt can be allocated (each model's queue is first come, first served); then each step adds
one token, taking a new page whenever the context crosses a page boundary; it frees every page
when its last token is produced. A request that needs a page when none is free preempts the
latest admitted running request of its own model (possibly itself), which returns to the head
of its queue to be recomputed (vLLM's policy). A request that ever waits for memory, at
admission or by preemption, counts as *waited*.

Only page events are simulated (an event heap), not every step, so an hour of traffic replays
in well under a second. Samples of the arena's accounting are taken every `sample_every` steps.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from fineserve.memory.accounting import account
from fineserve.memory.allocator import KVAllocator
from fineserve.memory.defrag import apply_moves, plan_defrag, stranded_fraction
from fineserve.memory.errors import OutOfPagesError
from fineserve.memory.slab import SlabAllocator

FINISH, NEED_PAGE, ARRIVE, SAMPLE = 0, 1, 2, 3


@dataclass
class ReplayRequest:
    """One request of the replay; `arrival` is a step index."""

    model: str
    arrival: int
    prompt: int
    output: int
    pages: list[int] = field(default_factory=list)
    start: int = -1  # step at which the current run (admission) began
    waited: bool = False
    epoch: int = 0  # bumped on preemption so stale events are ignored

    def context_at(self, step: int) -> int:
        return self.prompt + (step - self.start)


@dataclass(frozen=True)
class ReplayConfig:
    sample_every: int = 40
    defrag_threshold: float = 0.002  # stranded share of the arena that allows defragmentation
    defrag_max_moves: int = 256


@dataclass
class ReplayResult:
    requests: int = 0
    waited: int = 0
    preemptions: int = 0
    pages_moved: int = 0
    alloc_seconds: float = 0.0
    alloc_pages: int = 0
    samples: list[dict[str, float]] = field(default_factory=list)

    @property
    def waited_frac(self) -> float:
        return self.waited / self.requests if self.requests else 0.0

    def pressure_mean(self, key: str) -> float:
        """Mean of a sampled figure over samples taken while some request waited for memory
        (over all samples if there was never any pressure)."""
        pressured = [s[key] for s in self.samples if s["pressure"]]
        chosen = pressured or [s[key] for s in self.samples]
        return sum(chosen) / len(chosen) if chosen else 0.0


class MemoryReplay:
    """Event-driven replay of `requests` through `alloc` (see the module docstring)."""

    def __init__(
        self, alloc: KVAllocator, requests: Sequence[ReplayRequest], config: ReplayConfig
    ) -> None:
        self.alloc = alloc
        self.config = config
        self.events: list[tuple[int, int, int, int, ReplayRequest | None]] = []
        self.queues: dict[str, deque[ReplayRequest]] = {m: deque() for m in alloc.model_names}
        self.running: dict[str, list[ReplayRequest]] = {m: [] for m in alloc.model_names}
        self.tpp = {m: alloc.page_format(m).tokens_per_page for m in alloc.model_names}
        self.requests = list(requests)
        self.result = ReplayResult(requests=len(requests))
        self._seq = 0
        self._freed_since_compaction = True
        for r in requests:
            self._push(r.arrival, ARRIVE, r)
        end = max((r.arrival for r in requests), default=0)
        for step in range(0, end + 1, config.sample_every):
            self._push(step, SAMPLE, None)

    def _push(self, step: int, kind: int, req: ReplayRequest | None) -> None:
        self._seq += 1
        epoch = req.epoch if req is not None else 0
        heapq.heappush(self.events, (step, kind, self._seq, epoch, req))

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> ReplayResult:
        while self.events:
            step, kind, _, epoch, req = heapq.heappop(self.events)
            if req is not None and epoch != req.epoch:
                continue
            if kind == ARRIVE:
                assert req is not None
                self.queues[req.model].append(req)
                self._admit(step)
            elif kind == FINISH:
                assert req is not None
                self._finish(req, step)
            elif kind == NEED_PAGE:
                assert req is not None
                self._grow(req, step)
            else:
                self._sample(step)
        self.result.waited = sum(r.waited for r in self.requests)
        return self.result

    def _admit(self, step: int) -> None:
        """Admit queue heads, first come first served per model. A compaction triggered by
        one model's failed head can make room for another's, so a pass that moved pages is
        followed by another."""
        moved = -1
        while moved != self.result.pages_moved:
            moved = self.result.pages_moved
            for model, queue in self.queues.items():
                while queue:
                    req = queue[0]
                    need = -(-(req.prompt + 1) // self.tpp[model])
                    if not self._try_alloc(req, need):
                        req.waited = True
                        break
                    queue.popleft()
                    req.start = step
                    self.running[model].append(req)
                    self._schedule(req, step)

    def _schedule(self, req: ReplayRequest, step: int) -> None:
        capacity = len(req.pages) * self.tpp[req.model]
        finish = req.start + req.output
        need = step + (capacity - req.context_at(step)) + 1
        if need < finish:
            self._push(need, NEED_PAGE, req)
        else:
            self._push(finish, FINISH, req)

    def _grow(self, req: ReplayRequest, step: int) -> None:
        while not self._try_alloc(req, 1):
            victim = self.running[req.model][-1]
            self._preempt(victim)
            if victim is req:
                return
        self._schedule(req, step)

    def _preempt(self, req: ReplayRequest) -> None:
        self.running[req.model].remove(req)
        self._free(req)
        req.epoch += 1
        req.waited = True
        self.result.preemptions += 1
        self.queues[req.model].appendleft(req)

    def _finish(self, req: ReplayRequest, step: int) -> None:
        self.running[req.model].remove(req)
        self._free(req)
        if any(self.queues.values()):
            self._compact()  # memory is short: empty sparse slabs before admitting
        self._admit(step)

    # -- allocator calls (timed) -----------------------------------------------------------
    def _try_alloc(self, req: ReplayRequest, n: int) -> bool:
        """Allocate n pages for `req`; when memory is short, defragment once and retry."""
        if self._alloc_timed(req, n):
            return True
        return self._compact(req.model) and self._alloc_timed(req, n)

    def _alloc_timed(self, req: ReplayRequest, n: int) -> bool:
        """Time successful allocations only: a failed attempt is the scheduler's cost."""
        try:
            t0 = time.perf_counter()
            pages = self.alloc.allocate(req.model, n)
            self.result.alloc_seconds += time.perf_counter() - t0
        except OutOfPagesError:
            return False
        req.pages += pages
        self.result.alloc_pages += n
        return True

    def _free(self, req: ReplayRequest) -> None:
        t0 = time.perf_counter()
        self.alloc.free(req.model, req.pages)
        self.result.alloc_seconds += time.perf_counter() - t0
        req.pages = []
        self._freed_since_compaction = True

    # -- sampling and defragmentation ------------------------------------------------------
    def _sample(self, step: int) -> None:
        live = {
            m: sum(min(r.context_at(step), len(r.pages) * self.tpp[m]) for r in rs)
            for m, rs in self.running.items()
        }
        acc = account(self.alloc.usage(), live)
        sample = {k: acc.fraction(k) for k in ("live", "tail", "internal", "stranded", "edge")}
        sample["pressure"] = float(any(q for q in self.queues.values()))
        self.result.samples.append(sample)

    def _compact(self, for_model: str | None = None) -> bool:
        """Defragment a slab arena whose stranded pages exceed the threshold; True if any
        page moved (the executor would copy them and the engine update block tables).

        `for_model` waits for memory: other pools are compacted first, since their emptied
        slabs go back to the arena for it. A compaction that spends its whole move budget
        may have more to do, so the next shortage may compact again even without a free."""
        alloc = self.alloc
        if not isinstance(alloc, SlabAllocator) or not self._freed_since_compaction:
            return False
        self._freed_since_compaction = False
        if stranded_fraction(alloc) <= self.config.defrag_threshold:
            return False
        budget = self.config.defrag_max_moves
        moves = plan_defrag(alloc, budget, for_model)
        self._freed_since_compaction = len(moves) >= budget
        owner = {(r.model, p): r for rs in self.running.values() for r in rs for p in r.pages}
        apply_moves(alloc, moves)
        for move in moves:
            req = owner[(move.model, move.src)]
            req.pages[req.pages.index(move.src)] = move.dst
        self.result.pages_moved += len(moves)
        return bool(moves)
