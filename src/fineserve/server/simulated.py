"""A backend with the simulator's executor behind the real engine: instant (or paced) tokens.

Used by the server-overhead benchmark and by fast tests: everything but the model forward is
real (HTTP layer, async front, local scheduler, KV Slab pages). Text is a toy word codec: a word
`w<id>` is token `id`; other words hash to an id. No torch is imported.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fineserve.server.backend import ModelInfo, SamplingOptions
from fineserve.server.codec import TextCodec
from fineserve.server.inprocess import InProcessBackend, ServingEngine

VOCAB = 32000
TOY_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}<assistant>"


@dataclass(frozen=True)
class _Encoding:
    ids: list[int]


class WordTokenizer:
    """Whitespace words <-> ids (see the module docstring); `decode` writes ' w<id>' per id."""

    def encode(self, text: str, add_special_tokens: bool = True) -> _Encoding:
        ids = []
        for word in text.split():
            if word.startswith("w") and word[1:].isdigit() and int(word[1:]) < VOCAB:
                ids.append(int(word[1:]))
            else:
                ids.append(zlib.crc32(word.encode()) % VOCAB)
        return _Encoding(ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(f" w{int(i)}" for i in ids)

    def id_to_token(self, token_id: int) -> str:
        return f" w{int(token_id)}"


class ZeroCost:
    """Cost model of free steps (the scheduler then never predicts an SLO miss)."""

    def step_time(self, key: Any, batch: Any) -> float:
        return 0.0

    def supports(self, key: Any) -> bool:
        return True


class PacedExecutor:
    """Wraps an executor and sleeps `step_s` per non-empty step (wall-clock pacing)."""

    def __init__(self, inner: Any, step_s: float) -> None:
        self.inner = inner
        self.step_s = step_s

    def execute(self, plan: Any) -> Any:
        if self.step_s > 0:
            time.sleep(self.step_s)
        return self.inner.execute(plan)


def _check(options: SamplingOptions) -> SamplingOptions:
    if options.max_tokens < 1:
        raise ValueError("max_tokens must be >= 1")
    return options


def simulated_backend(
    names: Sequence[str] = ("sim",),
    *,
    max_model_len: int = 4096,
    arena_pages: int = 4096,
    step_s: float = 0.0,
    token_budget: int = 2048,
    max_queue: int = 100_000,
    slo_ttft_s: float | None = None,
    slo_tpot_s: float | None = None,
) -> InProcessBackend:
    """`names` as FP16-shaped models over one KV Slab arena of `arena_pages` pages."""
    from fineserve.costmodel.base import InstanceKey
    from fineserve.engine.clock import WallClock
    from fineserve.engine.factory import ModelSpec, build_engine
    from fineserve.memory.formats import KVFormat
    from fineserve.scheduler.local import SchedulerConfig, ServedModel
    from fineserve.sim.executor import SimExecutor

    fmt = KVFormat(2, 2, 64)
    specs = [
        ModelSpec(
            ServedModel(n, InstanceKey(n, "fp16"), max_model_len, slo_ttft_s, slo_tpot_s), fmt
        )
        for n in names
    ]
    executor = PacedExecutor(SimExecutor(ZeroCost(), vocab_size=VOCAB), step_s)
    engine = build_engine(
        specs,
        arena_pages * fmt.page_bytes,
        executor,
        ZeroCost(),
        policy="saab",
        config=SchedulerConfig(token_budget=token_budget, max_running=1024),
        clock=WallClock(),
    )
    codec = TextCodec(WordTokenizer(), TOY_TEMPLATE, {"bos_token": "", "eos_token": ""})
    infos = [ModelInfo(n, max_model_len, codec, slo_ttft_s, slo_tpot_s, max_queue) for n in names]
    return InProcessBackend(ServingEngine(engine, idle_wait_s=0.01), infos, _check)
