"""Turn a `StepPlan` into sampled tokens and per-batch solo work for the processor-sharing model.

Same token rule as `sim.executor.SimExecutor` (`token_stream`, re-stated in `token`), so the
simulated engine sees exactly the tokens it would see under that executor. Instead of one step
duration, each model batch becomes one activity whose `work` is the cost model's solo step time
for that batch and whose prefill fraction is `t(prefill part) / (t(prefill part) + t(decode part))`.
A multi-step decode plan (`num_steps = K`) costs each batch's K iterations with the cost
model (contexts growing by one each): for one batch as the cumulative work at the end of each
iteration (`run_steps`: one activity), else per iteration and batch (`run_iterations`).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from functools import partial

from fineserve.costmodel.base import BatchShape, CostModel, InstanceKey, inner_decode_times
from fineserve.costmodel.registry import FallbackCostModel
from fineserve.engine.step import ModelBatch, StepPlan, StepResult

_STEP = 7919  # `token_stream`'s stride per position


class BatchCoster:
    """Solo time and prefill fraction of model batches (pure function of the cost model)."""

    def __init__(self, cost_model: CostModel, vocab_size: int = 32000) -> None:
        self.cost_model = cost_model
        self.vocab_size = vocab_size
        self._crc: dict[str, int] = {}
        self._crc_inv: dict[str, int] = {}  # see `crc_inv`
        self._orbit: list[int] = []  # see `orbit`
        try:
            self._inverse: int | None = pow(_STEP, -1, vocab_size)
        except ValueError:  # 7919 and the vocabulary size share a factor
            self._inverse = None
        self._decoders: dict[InstanceKey, DecodeTimes] = {}

    def decode_times(self, key: InstanceKey) -> DecodeTimes:
        """The function giving `k` consecutive decode iterations' solo times of a batch of
        `key` (contexts + j at iteration j): the cost model's `decode_step_times` (through a
        `FallbackCostModel` to the model it answers `key` with), else `step_time` per
        iteration. Same floats as `cost_model.step_time` on each iteration's shape."""
        fn = self._decoders.get(key)
        if fn is None:
            model: object = self.cost_model
            while isinstance(model, FallbackCostModel):
                model = model.primary if model.primary.supports(key) else model.fallback
            method = getattr(model, "decode_step_times", None)
            if method is not None:
                fn = self._decoders[key] = partial(method, key)
            else:
                fn = self._decoders[key] = partial(inner_decode_times, self.cost_model, key)
        return fn

    def crc(self, request_id: str) -> int:
        """The request id's CRC (cached): `token_stream`'s base."""
        crc = self._crc.get(request_id)
        if crc is None:
            crc = self._crc[request_id] = zlib.crc32(request_id.encode())
        return crc

    def token(self, request_id: str, position: int) -> int:
        """`token_stream(request_id, position)`, with the request id's CRC cached."""
        return (self.crc(request_id) + _STEP * (position + 1)) % self.vocab_size

    def run(self, plan: StepPlan) -> tuple[StepResult, list[tuple[float, float]]]:
        """(result with tokens and the longest solo batch time, [(work_s, prefill_fraction)]).
        The decodes' tokens are the result's `columns` (one list per model batch, in batch
        order), the prefills' in its `tokens`."""
        tokens: dict[str, int] = {}
        columns: dict[str, list[int]] = {}
        works: list[tuple[float, float]] = []
        token = self.token
        cost = self.cost_model
        for batch in plan.batches:
            n_pre = batch.num_prefills
            positions, chunks = batch.positions, batch.token_ids
            prefill = tuple((len(chunks[i]), positions[i]) for i in range(n_pre))
            decode = tuple(positions[n_pre:])
            shape = BatchShape(prefill=prefill, decode_context=decode)
            work = cost.step_time(batch.key, shape)
            if not prefill:
                frac = 0.0
            elif not decode:
                frac = 1.0
            else:
                p = cost.step_time(batch.key, BatchShape(prefill=prefill))
                d = cost.step_time(batch.key, BatchShape(decode_context=decode))
                frac = p / (p + d) if p + d > 0 else 0.0
            works.append((work, frac))
            crcs, vocab = self._crc, self.vocab_size
            ids = batch.request_ids
            for i in range(n_pre):
                if batch.samples[i]:
                    tokens[ids[i]] = token(ids[i], positions[i] + len(chunks[i]))
            # decodes: one token fed at `p`, one sampled: `token(rid, p + 1)`, inlined as
            # (crc + 7919 * (p + 2)) % vocab once every crc is known
            dec_ids = ids[n_pre:] if n_pre else ids
            dec_pos = positions[n_pre:] if n_pre else positions
            known = list(map(crcs.get, dec_ids))
            if None in known:
                known = list(map(self.crc, dec_ids))
            sampled = [(c + _STEP * (p + 2)) % vocab for c, p in zip(known, dec_pos, strict=True)]
            if batch.model in columns:  # (one batch per model: not expected)
                tokens.update(zip(dec_ids, sampled, strict=True))
            elif sampled:
                columns[batch.model] = sampled
        longest = max((w for w, _ in works), default=0.0)
        return StepResult(plan.step_id, tokens, longest, columns=columns), works

    def run_steps(
        self, plan: StepPlan, limit_s: float = math.inf
    ) -> tuple[StepResult, list[float]]:
        """A multi-step plan of one batch: (result with every iteration's tokens, cumulative
        solo work at the end of each iteration); see `run_iterations` on `limit_s`."""
        result, iterations = self.run_iterations(plan, limit_s)
        marks: list[float] = []
        done = 0.0
        for ((work, _),) in iterations:
            done += work
            marks.append(done)
        result.duration_s = done
        return result, marks

    def run_iterations(
        self, plan: StepPlan, limit_s: float = math.inf
    ) -> tuple[StepResult, list[list[tuple[float, float]]]]:
        """A multi-step plan: (result with every iteration's tokens, per iteration the
        [(work_s, prefill_fraction 0)] of each batch). Only the iterations that start within
        `limit_s` of solo time run (`result.num_steps`; at least one): the later ones could
        not start before it (no batch runs faster than alone)."""
        batches = [(b.key, b.positions) for b in plan.batches]
        per_batch, longests, k = self.iteration_times(batches, plan.num_steps, limit_s)
        iterations = [[(times[j], 0.0) for times in per_batch] for j in range(k)]
        columns = self.token_columns(plan, k)
        longest = sum(longests[:k])
        result = StepResult(plan.step_id, {}, longest, num_steps=k, columns=columns)
        return result, iterations

    def iteration_times(
        self, batches: list[tuple[InstanceKey, list[int]]], k: int, limit_s: float = math.inf
    ) -> tuple[list[list[float]], list[float], int]:
        """(per batch its k decode iterations' solo times, each iteration's longest batch,
        the iterations that start within `limit_s` of solo time: at least one). `batches`:
        (key, contexts at the first iteration) of each batch."""
        # every batch's k iteration times in one pass each (a shorter run uses a prefix)
        per_batch = [self.decode_times(key)(positions, k) for key, positions in batches]
        # each iteration's longest batch (one batch: its own time)
        longests = per_batch[0] if len(per_batch) == 1 else list(map(max, *per_batch))
        start = 0.0
        n = 0
        for w in longests:
            if n and not start < limit_s:
                break
            n += 1
            start += w
        return per_batch, longests, n

    def token_columns(self, plan: StepPlan, k: int) -> dict[str, list[list[int]]]:
        """`token_lists` as `StepResult.columns`: per model, its batch's lists in batch order
        (a decode-only plan: one batch per model).

        With a stride invertible mod the vocabulary (`orbit`), token(rid, p + 1 + j) =
        (crc + 7919 * (p + 2 + j)) % vocab = orbit[m + j] for m = (crc * 7919^-1 + p + 2)
        % vocab, so each list is a slice of the orbit (no arithmetic per token)."""
        orbit = self.orbit(k)
        if orbit is None:
            lists = self.token_lists(plan, k)
            return {b.model: list(map(lists.__getitem__, b.request_ids)) for b in plan.batches}
        return {b.model: self._orbit_lists(b, k, orbit) for b in plan.batches}

    def _orbit_lists(self, batch: ModelBatch, k: int, orbit: list[int]) -> list[list[int]]:
        """The k-token lists of `batch`'s decodes, in batch order (see `token_columns`)."""
        ids = batch.request_ids
        known = list(map(self._crc_inv.get, ids))
        if None in known:
            known = list(map(self.crc_inv, ids))
        vocab = self.vocab_size
        lists = []
        for base, p in zip(known, batch.positions, strict=True):
            m = (base + p + 2) % vocab
            lists.append(orbit[m : m + k])
        return lists

    def token_lists(self, plan: StepPlan, k: int) -> dict[str, list[int]]:
        """The tokens each decode of a decode-only `plan` samples in k iterations: at
        position p + 1 + j in iteration j (`token`), by the formula, token by token."""
        lists: dict[str, list[int]] = {}
        vocab, crcs = self.vocab_size, self._crc
        step = _STEP * k
        for batch in plan.batches:
            for rid, p in zip(batch.request_ids, batch.positions, strict=True):
                crc = crcs.get(rid)
                if crc is None:
                    crc = self.crc(rid)
                # (crc + 7919 * (p + 2 + j)) % vocab for j < k
                first = crc + _STEP * (p + 2)
                lists[rid] = list(map(vocab.__rmod__, range(first, first + step, _STEP)))
        return lists

    def orbit(self, k: int) -> list[int] | None:
        """[(7919 * m) % vocab for m < vocab + k] (grown on demand), or None when 7919 has
        no inverse mod the vocabulary size."""
        if self._inverse is None:
            return None
        orbit = self._orbit
        if len(orbit) < self.vocab_size + k:
            orbit += [(_STEP * m) % self.vocab_size for m in range(len(orbit), self.vocab_size + k)]
        return orbit

    def crc_inv(self, request_id: str) -> int:
        """crc(request_id) * 7919^-1 mod the vocabulary size (cached; see `token_columns`)."""
        base = self._crc_inv.get(request_id)
        if base is None:
            assert self._inverse is not None
            base = self._crc_inv[request_id] = (
                self.crc(request_id) * self._inverse % self.vocab_size
            )
        return base

    def segment_marks(
        self, key: InstanceKey, positions: list[int], k: int, limit_s: float = math.inf
    ) -> list[float]:
        """The marks `run_steps` gives a one-batch plan of k decode iterations at
        `positions` (cumulative solo work at each iteration's end, of those that start
        within `limit_s`): the same floats, without sampling tokens."""
        per_batch, _, n = self.iteration_times([(key, positions)], k, limit_s)
        marks: list[float] = []
        done = 0.0
        for work in per_batch[0][:n]:
            done += work
            marks.append(done)
        return marks

    def decode_time(self, key: InstanceKey, positions: list[int]) -> float:
        """`run`'s solo time of one decode-only batch at `positions` (the same float)."""
        shape = BatchShape(prefill=(), decode_context=tuple(positions))
        return self.cost_model.step_time(key, shape)


DecodeTimes = Callable[[list[int], int], list[float]]
