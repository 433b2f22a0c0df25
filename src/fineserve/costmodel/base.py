"""Cost-model interface: seconds for one engine iteration of one model instance.

Invariants every implementation keeps: ``step_time`` is >= 0, is 0.0 for an empty batch, and is
non-decreasing when tokens, sequences or context lengths are added to the batch. No torch, no
wall clock: a cost model is a pure function of its fitted parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

QFORMAT_ALIASES = {"org": "fp16", "fp8_kv8": "fp8"}


def normalize_qformat(qformat: str) -> str:
    """Map profile spellings to ours: ``org`` -> ``fp16``, ``fp8_kv8`` -> ``fp8``; lower-case."""
    q = qformat.strip().lower()
    return QFORMAT_ALIASES.get(q, q)


@dataclass(frozen=True)
class InstanceKey:
    """What a cost is measured for: one model, in one precision, at one TP degree."""

    model: str  # e.g. "llama-3.1-8b", "qwen-3-32b", "llama-3.1-70b", or a local "tiny-llama"
    qformat: str  # "fp16" | "bf16" | "fp32" | "awq" | "gptq" | "fp8" | "w8a8" | "qoq" | ...
    tp: int = 1


@dataclass(frozen=True)
class BatchShape:
    """One engine iteration's work for one instance.

    ``prefill``: (new_tokens, context_before) per prefill chunk; ``decode_context``: context
    length of each decoding sequence (each decodes one token).
    """

    prefill: tuple[tuple[int, int], ...] = ()
    decode_context: tuple[int, ...] = ()

    @property
    def prefill_tokens(self) -> int:
        return sum(n for n, _ in self.prefill)

    @property
    def attention_pairs(self) -> float:
        """Causal attention (query, key) pairs of the prefill chunks: n*(c0 + (n+1)/2) each."""
        return float(sum(n * (c0 + (n + 1) / 2.0) for n, c0 in self.prefill))

    @property
    def num_decode(self) -> int:
        return len(self.decode_context)

    @property
    def decode_context_sum(self) -> int:
        return sum(self.decode_context)

    @property
    def is_empty(self) -> bool:
        return self.prefill_tokens == 0 and not self.decode_context


@runtime_checkable
class CostModel(Protocol):
    """What the scheduler and the simulator rely on."""

    def step_time(self, key: InstanceKey, batch: BatchShape) -> float:
        """Seconds for one engine iteration of that instance alone on its GPU(s)."""
        ...

    def supports(self, key: InstanceKey) -> bool:
        """Whether ``step_time`` can answer for ``key``."""
        ...


def prefill_time(model: CostModel, key: InstanceKey, tokens: int, context_before: int = 0) -> float:
    """One prefill chunk of ``tokens`` new tokens after ``context_before`` cached ones."""
    return model.step_time(key, BatchShape(prefill=((tokens, context_before),)))


def decode_time(model: CostModel, key: InstanceKey, batch: int, ctx: int) -> float:
    """One decode step of ``batch`` sequences each with context ``ctx``."""
    return model.step_time(key, BatchShape(decode_context=(ctx,) * batch))


class CostModelHelpers:
    """Mixin giving ``prefill_time`` / ``decode_time`` methods on top of ``step_time``."""

    def step_time(self, key: InstanceKey, batch: BatchShape) -> float:  # pragma: no cover
        raise NotImplementedError

    def prefill_time(self, key: InstanceKey, tokens: int, context_before: int = 0) -> float:
        return self.step_time(key, BatchShape(prefill=((tokens, context_before),)))

    def decode_time(self, key: InstanceKey, batch: int, ctx: int) -> float:
        return self.step_time(key, BatchShape(decode_context=(ctx,) * batch))

    def decode_step_times(
        self, key: InstanceKey, contexts: tuple[int, ...] | list[int], k: int
    ) -> list[float]:
        """Solo times of ``k`` consecutive decode iterations of the batch whose contexts are
        ``contexts`` (iteration j: every context + j): ``step_time`` per iteration.
        Implementations may override with a closed form giving the same floats."""
        return [
            self.step_time(key, BatchShape(decode_context=tuple(p + j for p in contexts)))
            for j in range(k)
        ]


def inner_decode_times(
    model: object, key: InstanceKey, contexts: tuple[int, ...] | list[int], k: int
) -> list[float]:
    """`model`'s solo times of ``k`` consecutive decode iterations (iteration j: every
    context + j) as floats: its ``decode_step_times`` when it has one, else its ``step_time``
    per iteration. For wrappers that adjust an inner model's times."""
    method = getattr(model, "decode_step_times", None)
    if method is not None:
        return [float(t) for t in method(key, contexts, k)]
    step_time = model.step_time  # type: ignore[attr-defined]
    return [
        float(step_time(key, BatchShape(decode_context=tuple(c + j for c in contexts))))
        for j in range(k)
    ]


@dataclass(frozen=True)
class InterferenceModel:
    """Slowdown of an instance that shares the GPU's SMs with other executing instances.

    Fitted from the H100 profile's MPS rows (``fit.fit_interference``): for every (model,
    qformat, tp, batch, input) the time at MPS share p is divided by the time at p = 100, and
    ``ratio = 1 + k * (100/p - 1)`` is fitted by least squares through the origin in
    ``x = 100/p - 1`` separately for prefill (``prefill_k``) and decode TPOT (``decode_k``).
    k = 1 means time scales inversely with the SM share (pure compute-bound); k near 0 means
    the phase barely cares how many SMs it gets (memory- or launch-bound).

    Co-location: when ``n`` instances execute at the same moment, each is treated as holding
    an equal 1/n share of the SMs (what MPS without limits tends to), so its slowdown is
    ``1 + k * (n - 1)``, with k interpolated by the share of its step spent in prefill. This
    ignores memory-bandwidth contention between two decodes (not observable in MPS rows).
    """

    prefill_k: float = 1.0
    decode_k: float = 0.5

    def share_slowdown(self, share: float, prefill_fraction: float) -> float:
        """Time multiplier at SM share ``share`` in (0, 1] for a step with that prefill share."""
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        f = min(max(prefill_fraction, 0.0), 1.0)
        k = f * self.prefill_k + (1.0 - f) * self.decode_k
        return 1.0 + k * (1.0 / share - 1.0)

    def colocated_slowdown(self, prefill_fraction: float, n_concurrent: int) -> float:
        """Multiplier (>= 1) for a step running beside ``n_concurrent - 1`` others."""
        if n_concurrent < 1:
            raise ValueError(f"n_concurrent must be >= 1, got {n_concurrent}")
        return self.share_slowdown(1.0 / n_concurrent, prefill_fraction)


def colocated_slowdown(
    prefill_fraction: float,
    n_concurrent: int,
    model: InterferenceModel | None = None,
) -> float:
    """How much slower an instance runs while ``n_concurrent - 1`` others run on its GPU.

    ``prefill_fraction`` is the share of the instance's solo step time spent on prefill work
    (1.0 pure prefill, 0.0 pure decode). ``model`` defaults to the coefficients fitted from the
    H100 MPS rows (see :class:`InterferenceModel`); the result is 1.0 when running alone.
    The default reads the committed JSON on every call: hot loops (the simulator) should pass
    ``model`` (e.g. ``TableCostModel.interference``) instead.
    """
    if model is None:
        from fineserve.costmodel.table import load_fitted_interference

        model = load_fitted_interference()
    return model.colocated_slowdown(prefill_fraction, n_concurrent)
