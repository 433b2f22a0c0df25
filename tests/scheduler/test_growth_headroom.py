"""`SchedulerConfig.growth_pages_per_running`: a new prompt is admitted only while its model
keeps that many pages free per running sequence (beyond `admit_headroom_pages`)."""

from __future__ import annotations

from types import ModuleType

import pytest

from fineserve.engine.engine import Engine
from fineserve.scheduler.local import SchedulerConfig

GROWTH = 4


def _engine_with_one_running(h: ModuleType, growth: int) -> tuple[Engine, int]:
    """An engine of 20 pages whose model runs one decode; (engine, its free pages)."""
    config = SchedulerConfig(token_budget=1024, growth_pages_per_running=growth)
    engine = h.make_engine([h.spec("a")], pages=20, config=config)
    engine.add_request("r0", "a", [1] * 40, max_tokens=50, arrival_s=0.0)
    engine.finish_step(engine.executor.execute(engine.begin_step(0.0)), 0.01)  # r0's prefill
    assert engine.scheduler.num_running("a") == 1
    return engine, engine.scheduler.pages.allocator.available_pages("a")


def _admitted(engine: Engine, prompt_tokens: int) -> bool:
    engine.add_request("r1", "a", [1] * prompt_tokens, max_tokens=2, arrival_s=0.01)
    plan = engine.begin_step(0.01)
    return any("r1" in batch.request_ids for batch in plan.batches)


@pytest.mark.parametrize("spare", [0, 1])
def test_a_prompt_keeps_growth_pages_free_per_running_sequence(h: ModuleType, spare: int) -> None:
    engine, free = _engine_with_one_running(h, GROWTH)
    keep = 1 + GROWTH * 1  # admit_headroom_pages + growth x one running sequence
    pages = free - keep + spare  # the new prompt's pages
    assert pages > 0
    assert _admitted(engine, pages * h.PAGE_TOKENS) == (spare == 0)


def test_without_growth_pages_the_same_prompt_is_admitted(h: ModuleType) -> None:
    engine, free = _engine_with_one_running(h, 0)
    pages = free - (1 + GROWTH) + 1  # refused above with growth pages
    assert _admitted(engine, pages * h.PAGE_TOKENS)


def test_negative_headroom_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="growth_pages_per_running"):
        SchedulerConfig(growth_pages_per_running=-1)
