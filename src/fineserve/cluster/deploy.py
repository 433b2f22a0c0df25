"""Turn a placement file into workers and a gateway: one engine per GPU/TP group.

`build_gateway(placement, backend="inprocess"|"ray", kind="torch"|"sim", base=ServeConfig)`:
every group of `placement.groups()` becomes one worker hosting the models placed on it
(their folders from the placement's model entries, SLOs from the placement). The in-process
backend runs every worker in this process (one machine); the Ray backend runs each as an actor
(``init_ray(address)`` first to join a real cluster). CUDA device binding per group is left to
the GPU executor (``num_gpus=tp`` actors on GPU machines).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from fineserve.cluster.gateway import Gateway, Worker
from fineserve.scheduler.placement.fileformat import PlacementFile

BACKENDS = ("inprocess", "ray")


def worker_spec(
    placement: PlacementFile, models: list[str], kind: str, base: Any = None
) -> tuple[str, Any]:
    """The factory spec of one worker (see `ray_backend.build_backend`)."""
    if kind == "sim":
        return ("sim", tuple(models))
    from fineserve.server.config import ModelConfig, ServeConfig

    configs = []
    for name in models:
        entry = placement.models[name]
        if entry.path is None:
            raise ValueError(f"model {name!r} has no path in the placement file")
        configs.append(
            ModelConfig(
                name=name,
                path=Path(entry.path),
                slo_ttft_s=entry.ttft_slo_s,
                slo_tpot_s=entry.tpot_slo_s,
                qformat=entry.qformat if entry.qformat not in ("fp16", "bf16") else None,
            )
        )
    cfg = (
        ServeConfig(models=tuple(configs)) if base is None else replace(base, models=tuple(configs))
    )
    return ("torch", cfg)


def build_workers(
    placement: PlacementFile, backend: str = "inprocess", kind: str = "torch", base: Any = None
) -> list[Worker]:
    """One worker per GPU group of ``placement``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown cluster backend {backend!r}; choose one of {BACKENDS}")
    workers: list[Worker] = []
    for gpus, insts in sorted(placement.groups().items()):
        name = "+".join(gpus)
        spec = worker_spec(placement, sorted({i.model for i in insts}), kind, base)
        if backend == "ray":
            from fineserve.cluster.ray_backend import RayWorker

            workers.append(RayWorker(name, spec))
        else:
            from fineserve.cluster.local import LocalWorker
            from fineserve.cluster.ray_backend import build_backend

            workers.append(LocalWorker(name, lambda spec=spec: build_backend(spec)))
    return workers


def build_gateway(
    placement: PlacementFile,
    backend: str = "inprocess",
    kind: str = "torch",
    base: Any = None,
    health_interval_s: float = 1.0,
) -> Gateway:
    """A gateway (a server `Backend`) over the workers of ``placement``; call ``start()``."""
    return Gateway(build_workers(placement, backend, kind, base), health_interval_s)
