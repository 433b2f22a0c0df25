"""What a policy returns: instances on GPU groups, memory per GPU, and predicted attainment.

Invariants of a :class:`Placement`: every instance's ``gpus`` is one aligned TP group of one
node with ``len(gpus) == tp``; replicas of a model are numbered 0..n-1 and sit on distinct
groups; ``used_bytes`` of a GPU = reserve + the weights placed on it (never above
``memory_bytes`` for a placement a policy returns); ``kv_need_bytes`` is the predicted KV need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class InstancePlacement:
    """One replica of one model on one GPU or TP group, with its batch bounds and rate share."""

    model: str
    tp: int
    replica: int
    gpus: tuple[str, ...]
    rate: float = 0.0
    min_batch: int = 1
    max_batch: int = 1


@dataclass(frozen=True)
class GpuUsage:
    """Memory and load of one GPU under a placement (bytes; ``util`` is a busy share)."""

    memory_bytes: int
    used_bytes: int  # reserve + weights
    kv_need_bytes: int = 0
    util: float = 0.0

    @property
    def headroom_bytes(self) -> int:
        """Memory left after weights, reserve and the predicted KV need (may be negative)."""
        return self.memory_bytes - self.used_bytes - self.kv_need_bytes


@dataclass(frozen=True)
class Prediction:
    """Predicted SLO attainment (share of requests within SLO, rate-weighted) and goodput."""

    slo_attainment: float
    goodput: float  # requests per second within SLO
    per_model: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    """A policy's answer. ``unplaced`` lists models no replica could be placed for."""

    policy: str
    instances: tuple[InstancePlacement, ...]
    gpus: Mapping[str, GpuUsage]
    predicted: Prediction
    kv_scheme: str = "slab"
    unplaced: tuple[str, ...] = ()

    def instances_of(self, model: str) -> list[InstancePlacement]:
        return [i for i in self.instances if i.model == model]

    def to_json(self) -> dict[str, Any]:
        """Exactly the documented JSON shape of ``fineserve plan --json``."""
        return {
            "policy": self.policy,
            "instances": [
                {"model": i.model, "tp": i.tp, "replica": i.replica, "gpus": list(i.gpus)}
                for i in self.instances
            ],
            "gpus": {
                g: {"memory_bytes": u.memory_bytes, "used_bytes": u.used_bytes}
                for g, u in self.gpus.items()
            },
            "predicted": {"slo_attainment": round(self.predicted.slo_attainment, 6)},
        }
