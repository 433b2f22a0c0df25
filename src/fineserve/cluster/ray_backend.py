"""Ray workers: one actor per GPU or TP group hosting an engine with its co-located models.

`RayWorker` is the gateway-side handle; `EngineActor` (created lazily, so importing this module
does not import Ray) runs in its own process and builds its backend from a picklable *factory
spec*: ``("sim", names)`` for the simulated executor, or ``("torch", ServeConfig)`` for real
models. Actors are created with ``max_restarts=-1``: when one dies, Ray restarts it (its
engine is rebuilt on the first call) while the gateway fails that actor's in-flight requests
with 503 and routes around it until a health ping succeeds again.

`init_ray()` starts (or joins, with ``address``) Ray with small footprints suited to a laptop:
few CPUs, a 100 MB object store, no dashboard, no usage stats; it works offline.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fineserve.cluster.gateway import WorkerLost
from fineserve.server.backend import Delta, GenerateRequest, ModelInfo

OBJECT_STORE_BYTES = 100 * 1024 * 1024


def init_ray(address: str | None = None, num_cpus: int | None = 2) -> Any:
    """Start a local Ray (or join ``address``); idempotent."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    if ray.is_initialized():
        return ray
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    else:
        ray.init(
            num_cpus=num_cpus,
            object_store_memory=OBJECT_STORE_BYTES,
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=False,
        )
    return ray


def build_backend(spec: tuple[str, Any]) -> Any:
    """A server backend from a factory spec (see the module docstring)."""
    kind, arg = spec
    if kind == "sim":
        from fineserve.server.simulated import simulated_backend

        return simulated_backend(tuple(arg), step_s=0.002)
    if kind == "torch":
        from fineserve.server.torch_backend import load_torch_backend

        return load_torch_backend(arg)
    raise ValueError(f"unknown worker kind {kind!r}")


class _EngineActorImpl:
    """Body of the Ray actor (async actor: one event loop per process)."""

    def __init__(self, spec: tuple[str, Any]) -> None:
        self.backend = build_backend(spec)
        self._started = False

    async def _ensure(self) -> None:
        if not self._started:
            await self.backend.start()
            self._started = True

    async def ping(self) -> bool:
        await self._ensure()
        return True

    def pid(self) -> int:
        return os.getpid()

    def models(self) -> list[ModelInfo]:
        return list(self.backend.models())

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        await self._ensure()
        async for delta in self.backend.generate(request):
            yield delta

    def abort(self, request_id: str) -> None:
        self.backend.abort(request_id)


class RayWorker:
    """Gateway-side handle of one engine actor."""

    def __init__(self, name: str, spec: tuple[str, Any], num_cpus: float = 0.0) -> None:
        ray = init_ray()
        actor_cls = ray.remote(_EngineActorImpl)
        self.name = name
        self.actor = actor_cls.options(
            name=None, num_cpus=num_cpus, max_restarts=-1, max_task_retries=0, max_concurrency=64
        ).remote(spec)
        # asked now, read on first use: actors of several workers build their engines in parallel
        self._models_ref: Any = self.actor.models.remote()
        self._models: list[ModelInfo] | None = None

    def models(self) -> Sequence[ModelInfo]:
        if self._models is None:
            import ray

            try:
                self._models = list(ray.get(self._models_ref))
            except ray.exceptions.RayError as exc:
                raise RuntimeError(f"worker {self.name} failed to start: {exc}") from None
        return self._models

    async def start(self) -> None:
        await self.actor.ping.remote()

    async def stop(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)

    async def ping(self) -> bool:
        return bool(await self.actor.ping.remote())

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        from ray.exceptions import RayActorError

        try:
            stream = self.actor.generate.options(num_returns="streaming").remote(request)
            async for ref in stream:
                yield await ref
        except RayActorError as exc:
            raise WorkerLost(f"actor {self.name} died: {type(exc).__name__}") from None

    async def abort(self, request_id: str) -> None:
        try:
            await self.actor.abort.remote(request_id)
        except Exception:  # the actor is gone: nothing to abort
            return
