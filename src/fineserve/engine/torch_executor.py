"""The torch executor: runs a `StepPlan` with one execution `ModelRunner` per model instance.

Co-located models run one after another in the same step; the step's duration is measured on
the engine's clock (a `WallClock` in production). A sampled token in the model's EOS set ends
the request (reported in `StepResult.stopped`) unless its sampling params say `ignore_eos`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from fineserve.engine.clock import Clock, WallClock
from fineserve.engine.engine import Engine
from fineserve.engine.factory import ModelSpec
from fineserve.engine.step import ModelBatch, StepPlan, StepResult
from fineserve.execution.batch import SeqChunk
from fineserve.execution.instance import ModelInstance, load_instance
from fineserve.execution.runner import ModelRunner
from fineserve.execution.sampling import SamplingParams
from fineserve.memory.registry import make_allocator
from fineserve.scheduler.local.config import SchedulerConfig, ServedModel
from fineserve.scheduler.local.costs import CostModel, InstanceKey
from fineserve.scheduler.local.policies import Policy
from fineserve.scheduler.local.scheduler import LocalScheduler

GREEDY = SamplingParams(temperature=0.0)


class TorchExecutor:
    """`Executor` over execution runners (see the module docstring)."""

    def __init__(
        self,
        runners: Mapping[str, ModelRunner],
        clock: Clock,
        eos_token_ids: Mapping[str, frozenset[int]] | None = None,
    ) -> None:
        self.runners = dict(runners)
        self.clock = clock
        self.eos = dict(eos_token_ids or {})

    def execute(self, plan: StepPlan) -> StepResult:
        start = self.clock.now()
        tokens: dict[str, int] = {}
        stopped: set[str] = set()
        for batch in plan.batches:
            self._run_batch(batch, tokens, stopped)
        return StepResult(plan.step_id, tokens, self.clock.now() - start, frozenset(stopped))

    def _run_batch(self, batch: ModelBatch, tokens: dict[str, int], stopped: set[str]) -> None:
        eos = self.eos.get(batch.model, frozenset())
        chunks = [
            SeqChunk(
                rid,
                batch.token_ids[i],
                batch.positions[i],
                batch.page_tables[i],
                (batch.sampling[i] or GREEDY) if batch.samples[i] else None,
                batch.output_index[i],
            )
            for i, rid in enumerate(batch.request_ids)
        ]
        for chunk, result in zip(chunks, self.runners[batch.model].step(chunks), strict=True):
            if result is None:
                continue
            rid = str(chunk.seq_id)
            tokens[rid] = result.token_id
            params = chunk.sampling
            if result.token_id in eos and not (params is not None and params.ignore_eos):
                stopped.add(rid)


@dataclass(frozen=True)
class TorchModel:
    """A model folder to serve: its name, SLOs and optional dtype / KV dtype overrides."""

    name: str
    path: Path
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    dtype: str | None = None
    kv_dtype: str | None = None
    qformat: str = "fp32"


def load_torch_engine(
    models: list[TorchModel],
    arena_bytes: int,
    cost_model: CostModel,
    *,
    policy: Policy | str = "saab",
    config: SchedulerConfig | None = None,
    clock: Clock | None = None,
    tokens_per_page: int = 16,
    scheme: str = "slab",
    seed: int | None = 0,
) -> tuple[Engine, dict[str, ModelInstance]]:
    """Load every model into one arena and build an engine that runs them on torch (CPU or
    the default device). Returns the engine and the loaded instances (tokenizers, EOS ids)."""
    clock = clock or WallClock()
    instances = {
        m.name: load_instance(Path(m.path), m.dtype, m.kv_dtype, tokens_per_page, seed)
        for m in models
    }
    specs = [
        ModelSpec(
            ServedModel(
                m.name,
                InstanceKey(m.name, m.qformat),
                instances[m.name].max_model_len,
                m.ttft_slo_s,
                m.tpot_slo_s,
            ),
            instances[m.name].kv_format,
        )
        for m in models
    ]
    allocator = make_allocator(scheme, arena_bytes, [s.model_kv() for s in specs])
    arena = torch.zeros(arena_bytes, dtype=torch.uint8)
    for name, inst in instances.items():
        inst.attach(arena, allocator, name)
    executor = TorchExecutor(
        {n: i.runner for n, i in instances.items()},
        clock,
        {n: i.eos_token_ids for n, i in instances.items()},
    )
    scheduler = LocalScheduler(
        [s.served for s in specs], allocator, cost_model, policy=policy, config=config
    )
    return Engine(scheduler, executor, clock), instances
