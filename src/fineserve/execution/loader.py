"""Load a Hugging Face model folder (config.json + safetensors, sharded or not) into a
`DecoderModel`.

Everything is read and checked before the model is returned: a folder that is not a model, an
unsupported architecture or quant method, or a missing tensor raises a `ModelLoadError` (or a
subclass) naming the file and the tensor, and nothing half-built escapes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from fineserve.execution.config import ModelConfig, ModelConfigError, load_model_config
from fineserve.execution.model import DecoderModel
from fineserve.execution.model_builder import build_model
from fineserve.execution.quant import MissingTensorError, QuantConfig, parse_quant_config

DTYPES: Mapping[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


class ModelLoadError(ModelConfigError):
    """The folder cannot be loaded (message names the file and, where relevant, the tensor)."""


@dataclass(frozen=True)
class LoadedModel:
    """A ready model plus what the runtime needs to know about its checkpoint.

    `kv_scales[layer] = (k_scale, v_scale)`: per-tensor FP8 KV scales from the checkpoint
    (1.0 where the checkpoint has none).
    """

    path: Path
    config: ModelConfig
    quant: QuantConfig
    model: DecoderModel
    dtype: torch.dtype
    kv_scales: tuple[tuple[float, float], ...]
    raw_config: Mapping[str, Any]


def resolve_dtype(dtype: str | torch.dtype | None, config: ModelConfig) -> torch.dtype:
    """Explicit dtype, else the checkpoint's, else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype or config.torch_dtype or "float32"
    name = str(name).removeprefix("torch.")
    if name not in DTYPES:
        raise ModelLoadError(f"unsupported dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def load_model(path: str | Path, dtype: str | torch.dtype | None = None) -> LoadedModel:
    """Read `path` (a model folder) and build the model on CPU."""
    folder = Path(path)
    config, raw = load_model_config(folder)
    try:
        qcfg = parse_quant_config(raw)
    except (ValueError, NotImplementedError, KeyError) as exc:
        raise ModelLoadError(f"{folder / 'config.json'}: {exc}") from exc
    torch_dtype = resolve_dtype(dtype, config)
    tensors, files = read_safetensors(folder)
    try:
        model = build_model(config, qcfg, tensors, torch_dtype)
    except MissingTensorError as exc:
        names = ", ".join(sorted({f.name for f in files}))
        raise ModelLoadError(f"{folder}: checkpoint ({names}) lacks a tensor: {exc}") from exc
    model.eval()
    return LoadedModel(
        path=folder,
        config=config,
        quant=qcfg,
        model=model,
        dtype=torch_dtype,
        kv_scales=_kv_scales(tensors, config.num_layers),
        raw_config=raw,
    )


def read_safetensors(folder: Path) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """All tensors of the checkpoint (every shard; the index file when there is one)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise ModelLoadError(f"{index}: not a safetensors index ({exc})") from exc
        files = sorted({folder / name for name in weight_map.values()})
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} is not a model folder: no *.safetensors weights")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise ModelLoadError(f"{index}: lists shard {file.name}, which is missing")
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                    tensors[name] = handle.get_tensor(name)
        except Exception as exc:
            raise ModelLoadError(f"{file}: cannot read safetensors ({exc})") from exc
    return tensors, files


def _kv_scales(tensors: Mapping[str, torch.Tensor], layers: int) -> tuple[tuple[float, float], ...]:
    out = []
    for i in range(layers):
        prefix = f"model.layers.{i}.self_attn"
        k = tensors.get(f"{prefix}.k_scale", tensors.get(f"{prefix}.k_proj.output_scale"))
        v = tensors.get(f"{prefix}.v_scale", tensors.get(f"{prefix}.v_proj.output_scale"))
        out.append(
            (
                1.0 if k is None else float(k.float().max()),
                1.0 if v is None else float(v.float().max()),
            )
        )
    return tuple(out)


def _scalar(t: torch.Tensor | None) -> float:
    return 1.0 if t is None else float(t.float().max())
