"""Request records from engine outputs, exactly as a streaming client would note them.

`RecordBook` keeps one `workload.metrics.RequestRecord` per request and updates it from the
engine's `RequestOutput`s with the time they were produced: the first output carrying tokens
sets `first_token_s`; every token is counted (and its time kept when `token_times` is on); a
finished output sets `finish_s` for "length"/"stop", else `error` (rejected, abort, error).
The live client applies the same rule to streamed chunks, so both produce the same records.
"""

from __future__ import annotations

from collections.abc import Iterable

from fineserve.engine.step import RequestOutput
from fineserve.workload.metrics import RequestRecord

OK_REASONS = frozenset({"length", "stop"})


class RecordBook:
    """Records by request id (insertion order = arrival order)."""

    def __init__(self, token_times: bool = True) -> None:
        self.records: dict[str, RequestRecord] = {}
        self.token_times = token_times

    def arrive(
        self,
        request_id: str,
        model: str,
        arrival_s: float,
        prompt_tokens: int,
        slo_ttft_s: float | None,
        slo_tpot_s: float | None,
    ) -> RequestRecord:
        rec = RequestRecord(
            model,
            arrival_s,
            prompt_tokens=prompt_tokens,
            slo_ttft_s=slo_ttft_s,
            slo_tpot_s=slo_tpot_s,
        )
        self.records[request_id] = rec
        return rec

    def fail(self, request_id: str, error: str) -> None:
        self.records[request_id].error = error

    def apply(self, outputs: Iterable[RequestOutput], now: float) -> None:
        """Apply outputs produced at time `now` (see the module docstring)."""
        records = self.records
        for out in outputs:
            rec = records[out.request_id]
            n = len(out.token_ids)
            if n:
                if rec.first_token_s is None:
                    rec.first_token_s = now
                rec.output_tokens += n
                if self.token_times:
                    rec.token_times_s.extend([now] * n)
            if out.finished:
                if out.finish_reason in OK_REASONS:
                    rec.finish_s = now
                else:
                    rec.error = out.finish_reason or "error"

    def values(self) -> list[RequestRecord]:
        return list(self.records.values())
