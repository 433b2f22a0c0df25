"""A simple first-come scheduler for the offline `LLM` (the engine's local scheduler replaces
it in serving).

Every iteration, for each model that has work (models take turns, so several models' steps
interleave over one arena): running sequences decode one token each, then waiting sequences
are prefilled first-come-first-served within a token budget (long prompts are chunked). Pages
are allocated per `tokens_per_page` tokens as a sequence grows and freed when it finishes.
When a decode cannot get a page, the newest running sequence of that model is preempted
(pages freed, recomputed later from its prompt plus the tokens it already generated).

Invariant: a sequence's `pages` always cover its `computed` tokens; pages of finished or
preempted sequences are returned to the allocator at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fineserve.execution.batch import SeqChunk
from fineserve.execution.runner import ModelRunner
from fineserve.execution.sampling import SampleResult, SamplingParams
from fineserve.memory.allocator import KVAllocator
from fineserve.memory.errors import OutOfPagesError


@dataclass(eq=False)
class SeqState:
    """One request's progress. `computed` tokens of `tokens` have their KV in `pages`."""

    seq_id: int
    model: str
    prompt: list[int]
    params: SamplingParams
    output: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[int, float] | None] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)
    computed: int = 0
    text: str = ""
    finish_reason: str | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output


Finisher = Callable[[SeqState, SampleResult], None]


class OfflineScheduler:
    """FCFS continuous batching over several models sharing one allocator."""

    def __init__(
        self,
        allocator: KVAllocator,
        runners: Mapping[str, ModelRunner],
        finisher: Finisher,
        max_batched_tokens: int = 512,
        max_seqs: int = 64,
    ) -> None:
        if max_batched_tokens < 1 or max_seqs < 1:
            raise ValueError("max_batched_tokens and max_seqs must be >= 1")
        self.allocator = allocator
        self.runners = runners
        self.finisher = finisher
        self.max_batched_tokens = max_batched_tokens
        self.max_seqs = max_seqs
        self.waiting: dict[str, deque[SeqState]] = {m: deque() for m in runners}
        self.running: dict[str, list[SeqState]] = {m: [] for m in runners}

    def add(self, seq: SeqState) -> None:
        self.waiting[seq.model].append(seq)

    def has_work(self) -> bool:
        return any(self.waiting[m] or self.running[m] for m in self.runners)

    def run(self) -> None:
        """Step until every added sequence has finished."""
        while self.has_work():
            for model in self.runners:
                if self.waiting[model] or self.running[model]:
                    self.step(model)

    def step(self, model: str) -> None:
        """One runner step for `model`: decodes first, then prefill chunks."""
        chunks, seqs = self._decode_chunks(model)
        self._prefill_chunks(model, chunks, seqs)
        if not chunks:
            raise RuntimeError(
                f"model {model!r}: no sequence fits in the KV arena (a prompt needs more "
                f"pages than the {self.allocator.available_pages(model)} available)"
            )
        results = self.runners[model].step(chunks)
        for chunk, seq, result in zip(chunks, seqs, results, strict=True):
            seq.computed = chunk.context_len
            if result is None:
                continue
            if seq in self.waiting[model]:
                self.waiting[model].remove(seq)
                self.running[model].append(seq)
            self.finisher(seq, result)
            if seq.finish_reason is not None:
                self.running[model].remove(seq)
                self._release(seq)

    def _decode_chunks(self, model: str) -> tuple[list[SeqChunk], list[SeqState]]:
        chunks: list[SeqChunk] = []
        seqs: list[SeqState] = []
        running = self.running[model]
        i = 0
        while i < len(running):
            seq = running[i]
            if not self._ensure_pages(seq, seq.computed + 1):
                self._preempt(model, running[-1])
                continue  # retry the same index (seq itself may have been preempted)
            chunks.append(self._chunk(seq, seq.tokens[seq.computed :]))
            seqs.append(seq)
            i += 1
        return chunks, seqs

    def _prefill_chunks(self, model: str, chunks: list[SeqChunk], seqs: list[SeqState]) -> None:
        budget = self.max_batched_tokens - len(chunks)
        active = len(self.running[model])
        for seq in list(self.waiting[model]):
            if budget <= 0 or active >= self.max_seqs:
                break
            todo = seq.tokens[seq.computed :]
            n = min(len(todo), budget)
            if not self._ensure_pages(seq, seq.computed + n):
                break
            chunks.append(self._chunk(seq, todo[:n], sample=n == len(todo)))
            seqs.append(seq)
            budget -= n
            active += 1

    def _chunk(self, seq: SeqState, new: list[int], sample: bool = True) -> SeqChunk:
        params = seq.params if sample else None
        return SeqChunk(seq.seq_id, new, seq.computed, list(seq.pages), params, len(seq.output))

    def _ensure_pages(self, seq: SeqState, tokens: int) -> bool:
        need = self.allocator.pages_for_tokens(seq.model, tokens) - len(seq.pages)
        if need <= 0:
            return True
        try:
            seq.pages.extend(self.allocator.allocate(seq.model, need))
        except OutOfPagesError:
            return False
        return True

    def _preempt(self, model: str, victim: SeqState) -> None:
        self.running[model].remove(victim)
        self._release(victim)
        victim.computed = 0
        self.waiting[model].appendleft(victim)

    def _release(self, seq: SeqState) -> None:
        if seq.pages:
            self.allocator.free(seq.model, seq.pages)
            seq.pages = []
