"""In-process cluster: routing by model, least outstanding work, failure -> 503, replacement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from fineserve.cluster import Gateway, LocalWorker
from fineserve.cluster.ray_backend import build_backend
from fineserve.server.backend import (
    BackendError,
    BackendUnavailable,
    Delta,
    GenerateRequest,
    ModelInfo,
    SamplingOptions,
)


def worker(name: str, models: tuple[str, ...]) -> LocalWorker:
    return LocalWorker(name, lambda: build_backend(("sim", models)))


def req(rid: str, model: str, n: int = 8) -> GenerateRequest:
    return GenerateRequest(rid, model, (1, 2, 3), SamplingOptions(max_tokens=n, temperature=0))


async def run(gw: Gateway, r: GenerateRequest) -> str | None:
    deltas = [d async for d in gw.generate(r)]
    return deltas[-1].finish_reason


def test_routes_by_model_and_balances() -> None:
    async def main() -> None:
        gw = Gateway([worker("w0", ("a", "b")), worker("w1", ("c",)), worker("w2", ("a",))])
        await gw.start()
        assert sorted(m.name for m in gw.models()) == ["a", "b", "c"]
        assert gw.route("c") == "w1"
        assert sorted(gw.workers_for("a")) == ["w0", "w2"]
        streams = [gw.generate(req(f"r{k}", "a", 64)) for k in range(4)]
        owners = set(gw._owner.values())
        assert owners == {"w0", "w2"}  # least outstanding work spreads them
        for s in streams:
            assert [d async for d in s][-1].finished
        assert await run(gw, req("x", "b")) == "length"
        with pytest.raises(BackendError) as exc:
            gw.generate(req("y", "nope"))
        assert exc.value.kind == "unknown_model"
        await gw.stop()

    asyncio.run(main())


def test_routes_by_the_models_own_outstanding_work() -> None:
    """A replica beside a busy neighbour but with less work of the request's own model wins
    over a replica with less work in total."""

    async def main() -> None:
        gw = Gateway([worker("w0", ("a", "b")), worker("w2", ("a",))])
        await gw.start()
        streams = [gw.generate(req("a1", "a", 64)), gw.generate(req("a2", "a", 64))]
        streams += [gw.generate(req(f"b{k}", "b", 64)) for k in range(3)]
        streams.append(gw.generate(req("a3", "a", 64)))  # a-work tie: least total, w2
        assert gw._owner["a1"] == "w0" and gw._owner["a2"] == "w2" and gw._owner["a3"] == "w2"
        streams.append(gw.generate(req("a4", "a", 64)))
        assert gw._owner["a4"] == "w0"  # 1 request of a vs 2, though 4 in all vs 2
        for s in streams:
            assert [d async for d in s][-1].finished
        assert all(v == 0 for slot in gw._slots.values() for v in slot.by_model.values())
        await gw.stop()

    asyncio.run(main())


def test_dead_worker_fails_fast_and_is_routed_around() -> None:
    async def main() -> None:
        w0, w1 = worker("w0", ("a",)), worker("w1", ("a",))
        gw = Gateway([w0, w1], health_interval_s=0.05)
        await gw.start()
        await w0.stop()  # dies
        await gw.check_health()
        assert gw.route("a") == "w1"
        await w1.stop()
        await gw.check_health()
        with pytest.raises(BackendError) as exc:
            gw.generate(req("z", "a"))
        assert exc.value.kind == "unavailable" and exc.value.status == 503
        await gw.stop()

    asyncio.run(main())


def test_lost_worker_mid_stream_is_503() -> None:
    async def main() -> None:
        w0 = worker("w0", ("a",))
        gw = Gateway([w0])
        await gw.start()
        stream = gw.generate(req("r", "a", 10_000))
        await anext(stream)
        w0.alive = False
        with pytest.raises(BackendUnavailable) as exc:
            async for _ in stream:
                pass
        assert exc.value.status == 503 and exc.value.code == "replica_lost"
        assert exc.value.retry_after_s is not None
        assert not gw._slots["w0"].healthy
        assert gw.in_flight() == 0
        await w0.backend.stop(0.1)

    asyncio.run(main())


def test_replace_worker_drops_nothing() -> None:
    async def main() -> None:
        gw = Gateway([worker("old", ("a",))])
        await gw.start()
        tasks = [asyncio.create_task(run(gw, req(f"r{k}", "a", 200))) for k in range(5)]
        await asyncio.sleep(0)
        await gw.replace_worker("old", worker("new", ("a",)))
        assert await asyncio.gather(*tasks) == ["length"] * 5
        assert gw.workers_for("a") == ["new"]
        assert await run(gw, req("after", "a")) == "length"
        await gw.stop()

    asyncio.run(main())


class RejectingWorker:
    """A worker whose admission turns every request away before its first token."""

    def __init__(self, name: str, models: tuple[str, ...]) -> None:
        self.name = name
        self._inner = worker(name, models)
        self.seen: list[str] = []

    def models(self) -> Sequence[ModelInfo]:
        return self._inner.models()

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self) -> None:
        await self._inner.stop()

    async def ping(self) -> bool:
        return True

    async def abort(self, request_id: str) -> None:
        return None

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        self.seen.append(request.request_id)
        yield Delta((), finished=True, finish_reason="rejected", error="cannot meet its TTFT")


def test_a_rejection_is_sent_on_to_another_replica() -> None:
    async def main() -> None:
        refuses = RejectingWorker("w0", ("a",))
        gw = Gateway([refuses, worker("w1", ("a",))])
        await gw.start()
        assert gw.route("a") == "w0"  # the tie goes to w0, which rejects
        assert await run(gw, req("r1", "a")) == "length"  # served by w1
        assert refuses.seen == ["r1"]
        assert all(s.outstanding == 0 and not s.requests for s in gw._slots.values())
        assert not gw._owner and not gw._model_of
        await gw.stop()

    asyncio.run(main())


def test_rejected_only_when_every_replica_refuses() -> None:
    async def main() -> None:
        first, second = RejectingWorker("w0", ("a",)), RejectingWorker("w1", ("a",))
        gw = Gateway([first, second, worker("w2", ("b",))])
        await gw.start()
        assert await run(gw, req("r1", "a")) == "rejected"
        assert first.seen == ["r1"] and second.seen == ["r1"]
        assert all(s.outstanding == 0 for s in gw._slots.values()) and not gw._owner
        await gw.stop()

    asyncio.run(main())
