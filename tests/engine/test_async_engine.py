"""AsyncEngine: streaming, abort, bad input, with the simulated executor (instant steps)."""

from __future__ import annotations

import asyncio
import time

import pytest

from fineserve.costmodel.base import InstanceKey
from fineserve.engine.async_engine import AsyncEngine
from fineserve.engine.clock import WallClock
from fineserve.engine.factory import ModelSpec, build_engine
from fineserve.engine.step import StepPlan, StepResult
from fineserve.memory.formats import KVFormat
from fineserve.scheduler.local import InvalidRequestError, SchedulerConfig, ServedModel
from fineserve.sim.executor import LinearCostModel, SimExecutor, token_stream

COST = LinearCostModel()


class PacedExecutor(SimExecutor):
    """The simulated executor, taking about 1 ms of real time per step, so long requests
    stay in flight long enough to be aborted."""

    def execute(self, plan: StepPlan) -> StepResult:
        time.sleep(0.001)
        return super().execute(plan)


def make_front() -> AsyncEngine:
    fmt = KVFormat(2, 2, 64)
    specs = [ModelSpec(ServedModel(n, InstanceKey(n, "fp16"), 1 << 20), fmt) for n in ("a", "b")]
    engine = build_engine(
        specs,
        2000 * fmt.page_bytes,
        PacedExecutor(COST),
        COST,
        policy="saab",
        config=SchedulerConfig(token_budget=64),
        clock=WallClock(),
    )
    return AsyncEngine(engine, idle_wait_s=0.01)


async def consume(stream) -> list:
    return [out async for out in stream]


def test_streams_tokens_of_concurrent_requests() -> None:
    async def main() -> None:
        async with make_front() as front:
            streams = [
                front.add_request(f"r{i}", "ab"[i % 2], [1] * (5 + i), max_tokens=4 + i)
                for i in range(6)
            ]
            results = await asyncio.wait_for(asyncio.gather(*map(consume, streams)), 10)
        for i, outs in enumerate(results):
            tokens = [t for o in outs for t in o.token_ids]
            assert tokens == [token_stream(f"r{i}", 5 + i + k) for k in range(4 + i)]
            assert outs[-1].finished and outs[-1].finish_reason == "length"
        assert front.engine.scheduler.used_pages() == {"a": 0, "b": 0}

    asyncio.run(main())


def test_abort_and_early_exit_free_pages_and_others_continue() -> None:
    async def main() -> None:
        async with make_front() as front:
            keep = front.add_request("keep", "a", [1] * 10, max_tokens=20)
            gone = front.add_request("gone", "b", [1] * 10, max_tokens=10_000)
            leave = front.add_request("leave", "a", [1] * 10, max_tokens=10_000)
            first = await asyncio.wait_for(anext(gone), 5)
            assert not first.finished
            assert front.abort("gone")
            rest = await asyncio.wait_for(consume(gone), 5)
            assert rest[-1].finish_reason == "abort"
            await asyncio.wait_for(anext(leave), 5)
            await leave.aclose()  # the client went away
            outs = await asyncio.wait_for(consume(keep), 10)
            assert sum(len(o.token_ids) for o in outs) == 20
            for _ in range(100):
                if not front.engine.scheduler.seqs:
                    break
                await asyncio.sleep(0.01)
        assert front.engine.scheduler.used_pages() == {"a": 0, "b": 0}

    asyncio.run(main())


def test_bad_request_raises_at_submission_and_engine_keeps_serving() -> None:
    async def main() -> None:
        async with make_front() as front:
            with pytest.raises(InvalidRequestError, match="unknown model"):
                front.add_request("x", "zzz", [1], max_tokens=1)
            with pytest.raises(InvalidRequestError, match="max_tokens"):
                front.add_request("y", "a", [1], max_tokens=0)
            outs = await asyncio.wait_for(consume(front.add_request("z", "a", [1], 3)), 5)
            assert outs[-1].finish_reason == "length"

    asyncio.run(main())
