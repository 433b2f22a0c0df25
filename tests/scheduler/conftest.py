"""Helpers for deterministic scheduler tests: simulated executor, virtual clock, slab arena.

Tests reach the helpers through the `h` fixture (this module), as pytest runs in importlib mode.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import ModuleType

import pytest

from fineserve.costmodel.base import InstanceKey
from fineserve.engine.clock import VirtualClock
from fineserve.engine.engine import Engine
from fineserve.engine.factory import ModelSpec, build_engine
from fineserve.engine.step import RequestOutput
from fineserve.memory.formats import KVDtype, KVFormat
from fineserve.scheduler.local.config import SchedulerConfig, ServedModel
from fineserve.sim.executor import LinearCostModel, SimExecutor

COST = LinearCostModel(fixed_s=0.005, per_token_s=0.0001, per_context_s=0.0)
PAGE_TOKENS = 16


def spec(
    name: str,
    dtype: KVDtype = KVDtype.FP16,
    ttft: float | None = None,
    tpot: float | None = None,
    max_len: int = 4096,
    reserve_bytes: int = 0,
) -> ModelSpec:
    served = ServedModel(name, InstanceKey(name, dtype.value), max_len, ttft, tpot)
    fmt = KVFormat(num_layers=2, kv_heads=2, head_dim=64, dtype=dtype, tokens_per_page=16)
    return ModelSpec(served, fmt, reserve_bytes=reserve_bytes)


def page_bytes(dtype: KVDtype = KVDtype.FP16) -> int:
    return spec("x", dtype).kv.page_bytes


def make_engine(
    specs: Sequence[ModelSpec],
    pages: int = 1000,
    policy: str = "fcfs",
    config: SchedulerConfig | None = None,
    **alloc: object,
) -> Engine:
    """An engine whose arena holds `pages` FP16 pages."""
    return build_engine(
        specs,
        pages * page_bytes(),
        SimExecutor(COST),
        COST,
        policy=policy,
        config=config or SchedulerConfig(token_budget=64),
        clock=VirtualClock(),
        **alloc,
    )


def collect(outputs: Sequence[RequestOutput]) -> dict[str, list[RequestOutput]]:
    by_id: dict[str, list[RequestOutput]] = {}
    for out in outputs:
        by_id.setdefault(out.request_id, []).append(out)
    return by_id


def tokens_of(outputs: Sequence[RequestOutput]) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


def assert_no_pages(engine: Engine) -> None:
    alloc = engine.scheduler.pages.allocator
    for m in alloc.model_names:
        assert alloc.used_pages(m) == 0, f"{m} still holds {alloc.used_pages(m)} pages"
    alloc.check_integrity()


def two_models() -> list[ModelSpec]:
    """An FP16 model and an INT4-KV model."""
    return [spec("a"), spec("b", KVDtype.INT4)]


@pytest.fixture
def h() -> ModuleType:
    """This module: `h.make_engine(...)`, `h.spec(...)`, ..."""
    return sys.modules[__name__]
