"""Deployments of a placement: in-process workers (default) or Ray actors, behind one gateway.

    from fineserve.cluster import build_gateway, init_ray
    from fineserve.scheduler.placement.fileformat import load_placement_file
    gateway = build_gateway(load_placement_file("placement.yaml"), backend="ray")
    app = create_app(gateway)          # the gateway is a server `Backend`

`fineserve serve --placement FILE [--backend inprocess|ray]` does this (`cluster.serve` reads and
checks the file for serving). See docs/cluster.md. Importing this package does not import Ray
or torch.
"""

from fineserve.cluster.deploy import BACKENDS, build_gateway, build_workers
from fineserve.cluster.gateway import Gateway, Worker, WorkerLost
from fineserve.cluster.local import LocalWorker
from fineserve.cluster.ray_backend import RayWorker, init_ray

__all__ = [
    "BACKENDS",
    "Gateway",
    "LocalWorker",
    "RayWorker",
    "Worker",
    "WorkerLost",
    "build_gateway",
    "build_workers",
    "init_ray",
]
