"""Build an `InProcessBackend` that runs real model folders with the torch executor.

The engine's cost model is `LinearCostModel` unless one is given (the scheduler uses it only to
predict SLO misses); KV memory is one arena of `config.arena_bytes` under `config.scheme`.
Every runner is wrapped so the logprobs it samples reach the API (see `RecordingRunner`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fineserve.server.backend import ModelInfo, SamplingOptions
from fineserve.server.codec import TextCodec
from fineserve.server.config import ModelConfig, ServeConfig
from fineserve.server.inprocess import InProcessBackend, LogprobSink, RecordingRunner, ServingEngine


def detect_qformat(folder: Path) -> str:
    """The precision named by a folder's config.json (quantization method, else dtype)."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return "fp16"
    quant = cfg.get("quantization_config") or {}
    method = str(quant.get("quant_method") or quant.get("format") or "").lower()
    if method:
        return {"compressed-tensors": "w8a8"}.get(method, method)
    dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float16")
    return {"float32": "fp32", "bfloat16": "bf16"}.get(dtype, "fp16")


def to_sampling_params(options: SamplingOptions) -> Any:
    """`SamplingOptions` -> execution `SamplingParams` (ValueError on bad values)."""
    from fineserve.execution.sampling import SamplingParams

    return SamplingParams(
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        seed=options.seed,
        logprobs=options.logprobs,
        ignore_eos=options.ignore_eos,
        stop_token_ids=options.stop_token_ids,
    )


def _torch_model(m: ModelConfig) -> Any:
    from fineserve.engine.torch_executor import TorchModel

    if not (Path(m.path) / "config.json").is_file():
        raise ValueError(f"model {m.name!r}: {m.path} is not a model folder (no config.json)")
    return TorchModel(
        m.name,
        Path(m.path),
        m.slo_ttft_s,
        m.slo_tpot_s,
        m.dtype,
        m.kv_dtype,
        m.qformat or detect_qformat(m.path),
    )


def load_torch_backend(config: ServeConfig, cost_model: Any = None) -> InProcessBackend:
    """Load every model of `config` into one arena (see the module docstring)."""
    from fineserve.engine.clock import WallClock
    from fineserve.engine.torch_executor import load_torch_engine
    from fineserve.scheduler.local import SchedulerConfig
    from fineserve.sim.executor import LinearCostModel

    engine, instances = load_torch_engine(
        [_torch_model(m) for m in config.models],
        config.arena_bytes,
        cost_model or LinearCostModel(),
        policy=config.policy,
        config=SchedulerConfig(token_budget=config.token_budget),
        clock=WallClock(),
        tokens_per_page=config.tokens_per_page,
        scheme=config.scheme,
        seed=config.seed,
    )
    sink = LogprobSink()
    runners = engine.executor.runners  # type: ignore[attr-defined]
    for name in list(runners):
        runners[name] = RecordingRunner(runners[name], sink)
    infos = [
        ModelInfo(
            name=m.name,
            max_model_len=instances[m.name].max_model_len,
            codec=TextCodec.from_folder(Path(m.path), instances[m.name].tokenizer),
            slo_ttft_s=m.slo_ttft_s,
            slo_tpot_s=m.slo_tpot_s,
            max_queue=m.max_queue,
        )
        for m in config.models
    ]
    return InProcessBackend(
        ServingEngine(engine, idle_wait_s=0.05), infos, to_sampling_params, sink
    )
