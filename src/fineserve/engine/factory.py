"""Assemble an engine from model specs: allocator + local scheduler + executor + clock."""

from __future__ import annotations

from collections.abc import Sequence as Seqs
from dataclasses import dataclass
from typing import Any

from fineserve.engine.clock import Clock
from fineserve.engine.engine import Engine
from fineserve.engine.step import Executor
from fineserve.memory.allocator import ModelKV
from fineserve.memory.formats import KVFormat
from fineserve.memory.registry import make_allocator
from fineserve.scheduler.local.config import SchedulerConfig, ServedModel
from fineserve.scheduler.local.costs import CostModel
from fineserve.scheduler.local.policies import Policy
from fineserve.scheduler.local.scheduler import LocalScheduler


@dataclass(frozen=True)
class ModelSpec:
    """A co-located model as the engine needs it: scheduling facts and its KV page format."""

    served: ServedModel
    kv: KVFormat
    reserve_bytes: int = 0

    @property
    def name(self) -> str:
        return self.served.name

    def model_kv(self) -> ModelKV:
        return ModelKV(self.served.name, self.kv, reserve_bytes=self.reserve_bytes)


def build_engine(
    specs: Seqs[ModelSpec],
    arena_bytes: int,
    executor: Executor,
    cost_model: CostModel,
    *,
    policy: Policy | str = "saab",
    config: SchedulerConfig | None = None,
    clock: Clock | None = None,
    scheme: str = "slab",
    **allocator_options: Any,
) -> Engine:
    """An engine over one arena shared by `specs` (KV memory scheme `scheme`)."""
    allocator = make_allocator(
        scheme, arena_bytes, [s.model_kv() for s in specs], **allocator_options
    )
    scheduler = LocalScheduler(
        [s.served for s in specs], allocator, cost_model, policy=policy, config=config
    )
    return Engine(scheduler, executor, clock)
