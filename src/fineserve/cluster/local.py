"""In-process workers: each wraps a server `Backend` (one engine) living in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

from fineserve.cluster.gateway import WorkerLost
from fineserve.server.backend import Backend, Delta, GenerateRequest, ModelInfo


class LocalWorker:
    """A worker over a backend built by ``factory`` (called once, at construction)."""

    def __init__(self, name: str, factory: Callable[[], Backend]) -> None:
        self.name = name
        self.backend = factory()
        self.alive = True

    def models(self) -> Sequence[ModelInfo]:
        return self.backend.models()

    async def start(self) -> None:
        await self.backend.start()

    async def stop(self) -> None:
        if self.alive:
            self.alive = False
            await self.backend.stop(drain_timeout_s=5.0)

    async def ping(self) -> bool:
        return self.alive

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if not self.alive:
            raise WorkerLost(f"worker {self.name} is stopped")
        async for delta in self.backend.generate(request):
            if not self.alive:
                raise WorkerLost(f"worker {self.name} stopped")
            yield delta

    async def abort(self, request_id: str) -> None:
        self.backend.abort(request_id)
