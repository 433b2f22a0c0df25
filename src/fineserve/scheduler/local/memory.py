"""KV pages for the local scheduler: grants, precision-aware arbitration, preemption.

`PageBroker` is the scheduler's only door to the allocator. Invariant: a sequence's `pages`
are exactly the pages the allocator holds for it; `release` returns all of them at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

from fineserve.memory.allocator import KVAllocator
from fineserve.memory.arbitration import (
    MemoryDemand,
    PreemptionCandidate,
    choose_victim,
    grant_order,
    reserve_pages,
)
from fineserve.memory.errors import OutOfPagesError
from fineserve.scheduler.local.config import ServedModel
from fineserve.scheduler.local.sequence import Sequence


class PageBroker:
    """Allocates pages for sequences and picks preemption victims (see module docstring)."""

    def __init__(
        self,
        allocator: KVAllocator,
        models: Mapping[str, ServedModel],
        max_preemptions: int,
    ) -> None:
        self.allocator = allocator
        self.models = models
        self.max_preemptions = max_preemptions
        self.tokens_per_page = {m: allocator.page_format(m).tokens_per_page for m in models}
        self.tokens_per_byte = {m: 1.0 / allocator.page_format(m).bytes_per_token for m in models}
        self._reserve: dict[str, int] = {}  # `reserve_pages` by model (fixed per allocator)
        # set by `pick_victim`: its last None came with no candidate at all (not even the
        # asking sequence), rather than from `choose_victim` declining the candidates
        self.no_candidate = False

    def pages_needed(self, seq: Sequence, tokens_after: int) -> int:
        """Extra pages `seq` needs so its KV can hold `tokens_after` tokens."""
        t = self.tokens_per_page[seq.model]
        return max(0, -(-tokens_after // t) - len(seq.pages))

    def available(self, model: str) -> int:
        return self.allocator.available_pages(model)

    def try_allocate(self, seq: Sequence, n: int) -> list[int] | None:
        """Give `seq` n more pages, or None (nothing given) when memory is short."""
        try:
            pages = self.allocator.allocate(seq.model, n)
        except OutOfPagesError:
            return None
        seq.pages.extend(pages)
        return pages

    def grant(
        self,
        seq: Sequence,
        n: int,
        candidates: Callable[[], Iterable[Sequence]],
        preempt: Callable[[Sequence], None],
        now: float,
    ) -> list[int] | None:
        """Allocate n pages for `seq`, preempting victims (chosen by arbitration among
        `candidates()` and `seq` itself) while memory is short. None if `seq` gets none
        (it may itself have been preempted: check its status)."""
        for _ in range(self.max_preemptions + 1):
            pages = self.try_allocate(seq, n)
            if pages is not None:
                return pages
            victim = self.pick_victim(seq, candidates(), now)
            if victim is None:
                return None
            preempt(victim)
            if victim is seq:
                return None
        return None

    def pick_victim(self, seq: Sequence, others: Iterable[Sequence], now: float) -> Sequence | None:
        """The arbitration's victim among `others` and `seq`. Victims of `seq`'s own model are
        preferred (their pages surely help); other models' only when it has none. Only those
        `choose_victim` may take (their model keeps its reserve without them) become
        candidates: the same filter it applies, done first so a refused sequence costs no
        candidate (and no look at the rest once `seq`'s model can give up nothing)."""
        model, room = seq.model, self._room_of()
        self.no_candidate = True
        own_room = room(model)
        stuck = own_room < 1 and len(seq.pages) > own_room  # no sequence of its model may go
        same_seen = False
        same: list[Sequence] = []
        other: list[Sequence] = []
        for s in others:
            pages = len(s.pages)
            if not pages or s is seq:
                continue
            if s.model == model:
                if stuck:
                    return None
                same_seen = True
                if pages <= own_room:
                    same.append(s)
            elif not same_seen and pages <= room(s.model):
                other.append(s)
        pool = same if same_seen else other
        pool.sort(key=lambda s: -s.arrival_s)  # newest first: ties go to the newest
        if len(seq.pages) <= own_room:
            pool.append(seq)
        if not pool:
            return None
        self.no_candidate = False
        by_id = {s.request_id: s for s in pool}
        chosen = choose_victim([self.candidate(s, now) for s in pool], self.allocator)
        return by_id[chosen.request_id] if chosen is not None else None

    def room(self, model: str) -> int:
        """The most pages a preemption may take from `model` and keep its reserve."""
        return self._room_of()(model)

    def _room_of(self) -> Callable[[str], int]:
        """Per model (computed once per call), the most pages a preemption may take from it
        and keep its reserve."""
        alloc, room, reserve = self.allocator, {}, self._reserve

        def of(model: str) -> int:
            r = room.get(model)
            if r is None:
                floor = reserve.get(model)
                if floor is None:
                    floor = reserve[model] = reserve_pages(alloc, model)
                r = room[model] = alloc.used_pages(model) - floor
            return r

        return of

    def candidate(self, seq: Sequence, now: float) -> PreemptionCandidate:
        return PreemptionCandidate(
            model=seq.model,
            request_id=seq.request_id,
            pages=len(seq.pages),
            slack_s=self.slack(seq, now),
            tokens_per_byte=self.tokens_per_byte[seq.model],
        )

    def slack(self, seq: Sequence, now: float) -> float:
        """Time to the sequence's next deadline: its next token (TPOT) once decoding, else
        its first token (TTFT); inf without an SLO."""
        tpot = self.models[seq.model].tpot_slo_s
        if seq.last_token_s is not None:
            return seq.last_token_s + tpot - now if tpot is not None else math.inf
        return seq.deadline_s - now

    def release(self, seq: Sequence) -> None:
        """Give back every page of `seq` at once."""
        if seq.pages:
            self.allocator.free(seq.model, seq.pages)
            seq.pages = []

    def rank_models(self, demand: Mapping[str, int], slack: Mapping[str, float]) -> list[str]:
        """Models with page demand, in the order arbitration serves them."""
        demands = [
            MemoryDemand(m, n, slack.get(m, math.inf), self.tokens_per_byte[m])
            for m, n in demand.items()
        ]
        return [d.model for d in grant_order(demands, self.allocator)]
