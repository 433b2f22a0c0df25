"""Per-model request streams for the memory benchmark, from the trace data or its synthetic twin.

Arrivals come from the Azure 2023 conversation trace (each model gets its own disjoint slice of
the trace, time-scaled to its rate, so its arrivals are as bursty as the trace); lengths come
from ShareGPT. Without a data folder the fitted synthetic equivalents are used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fineserve.bench.memory_replay import ReplayRequest
from fineserve.workload.arrivals import attach_lengths, power_law_shares, split_by_slices
from fineserve.workload.synthetic import synthetic_azure, synthetic_sharegpt_lengths
from fineserve.workload.traces import TraceRequest, load_azure, load_sharegpt_lengths


@dataclass(frozen=True)
class TraceSource:
    """The base trace (arrival shape) and the length table, loaded once."""

    arrivals: tuple[TraceRequest, ...]
    lengths: tuple[tuple[int, int], ...]
    origin: str

    @staticmethod
    def load(data_dir: Path | None, seed: int = 0) -> TraceSource:
        if data_dir is not None:
            return TraceSource(
                tuple(load_azure(data_dir, "conv")),
                tuple(load_sharegpt_lengths(data_dir)),
                f"Azure 2023 conv arrivals + ShareGPT lengths from {data_dir}",
            )
        return TraceSource(
            tuple(synthetic_azure("conv", seed=seed)),
            tuple(synthetic_sharegpt_lengths(30_000, seed=seed)),
            "synthetic Azure-like arrivals + ShareGPT-like lengths (no data folder)",
        )

    def mean_kv_token_steps(self) -> float:
        """Mean over requests of the sum over its life of its context (token x steps)."""
        total = sum(p * o + o * (o + 1) / 2 for p, o in self.lengths)
        return total / len(self.lengths)


def ranked_rates(total_rps: float, ranking: Sequence[int], alpha: float = 1.0) -> list[float]:
    """Rate of each model when model `ranking[i]` has popularity rank i (share ∝ (i+1)^-alpha)."""
    shares = power_law_shares(len(ranking), alpha)
    rates = [0.0] * len(ranking)
    for rank, model_index in enumerate(ranking):
        rates[model_index] = total_rps * shares[rank]
    return rates


def build_requests(
    source: TraceSource,
    names: Sequence[str],
    rates: Sequence[float],
    duration_s: float,
    step_s: float,
    seed: int,
) -> list[ReplayRequest]:
    """One bursty stream per model, with lengths drawn from the length table."""
    streams = split_by_slices(source.arrivals, rates, duration_s)
    out: list[ReplayRequest] = []
    for i, (name, stream) in enumerate(zip(names, streams, strict=True)):
        timed = attach_lengths([r.arrival_s for r in stream], source.lengths, seed=seed + i)
        out += [
            ReplayRequest(name, int(r.arrival_s / step_s), r.prompt_tokens, r.output_tokens)
            for r in timed
        ]
    return out
