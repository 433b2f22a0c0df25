"""Model configuration parsed from a Hugging Face `config.json` (no torch, no weights).

Accepts transformers 4 and 5 spellings: `rope_theta` + `rope_scaling` (4.x) or
`rope_parameters` (5.x); `torch_dtype` (4.x) or `dtype` (5.x). Supported architectures are
Llama, Mistral, Qwen2 and Qwen3; anything else raises `UnsupportedModelError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class ModelConfigError(ValueError):
    """A model folder or config that cannot be served (message names the file)."""


class UnsupportedModelError(ModelConfigError):
    """The config names an architecture (or rope type) this engine does not implement."""


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters. `rope_type` is one of `SUPPORTED_ROPE_TYPES`."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one decoder-only model.

    Invariants: `num_heads % num_kv_heads == 0`; `head_dim >= 1`; one `sliding_windows`
    entry per layer (None = full attention for that layer).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeConfig
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    sliding_windows: tuple[int | None, ...]
    torch_dtype: str | None = None
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    hidden_act: str = "silu"

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


def load_model_config(folder: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """Read `folder/config.json`; return the parsed config and the raw dict."""
    path = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise ModelConfigError(f"{folder} is not a directory (expected a model folder)")
    if not path.is_file():
        raise ModelConfigError(f"{folder} is not a model folder: {path.name} is missing")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelConfigError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ModelConfigError(f"{path}: expected a JSON object")
    return parse_model_config(raw, source=str(path)), raw


def parse_model_config(raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Parse a config dict; `source` names the file in error messages."""
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        archs = raw.get("architectures")
        raise UnsupportedModelError(
            f"{source}: unsupported architecture model_type={model_type!r} "
            f"(architectures={archs}); supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    try:
        hidden = int(raw["hidden_size"])
        num_heads = int(raw["num_attention_heads"])
        num_layers = int(raw["num_hidden_layers"])
        vocab = int(raw["vocab_size"])
        inter = int(raw["intermediate_size"])
    except KeyError as exc:
        raise ModelConfigError(f"{source}: missing required field {exc.args[0]!r}") from None
    num_kv = int(raw.get("num_key_value_heads") or num_heads)
    head_dim = int(raw.get("head_dim") or hidden // num_heads)
    if num_heads % num_kv:
        raise ModelConfigError(
            f"{source}: num_attention_heads={num_heads} is not a multiple of "
            f"num_key_value_heads={num_kv}"
        )
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"{source}: unsupported hidden_act {act!r} (only 'silu')")
    attention_bias = bool(raw.get("attention_bias", False))
    is_qwen2 = model_type == "qwen2"
    return ModelConfig(
        model_type=model_type,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv,
        head_dim=head_dim,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope=_parse_rope(raw, source),
        max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=True if is_qwen2 else attention_bias,
        o_bias=False if is_qwen2 else attention_bias,
        mlp_bias=bool(raw.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        sliding_windows=_sliding_windows(raw, model_type, num_layers),
        torch_dtype=raw.get("dtype") or raw.get("torch_dtype"),
        eos_token_ids=_int_tuple(raw.get("eos_token_id")),
        bos_token_id=raw.get("bos_token_id"),
    )


def _int_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _parse_rope(raw: dict[str, Any], source: str) -> RopeConfig:
    """Merge 4.x (`rope_theta`, `rope_scaling`) and 5.x (`rope_parameters`) spellings."""
    params: dict[str, Any] = {}
    for key in ("rope_scaling", "rope_parameters"):
        value = raw.get(key)
        if isinstance(value, dict):
            params.update(value)
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"{source}: unsupported rope type {rope_type!r}; supported: "
            f"{', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModelError(f"{source}: partial_rotary_factor != 1 is not supported")
    return RopeConfig(
        theta=theta,
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(
            params.get("original_max_position_embeddings")
            or raw.get("max_position_embeddings", 8192)
        ),
    )


def _sliding_windows(raw: dict[str, Any], model_type: str, layers: int) -> tuple[int | None, ...]:
    """Per-layer attention window (keys kept: the last `window` positions, self included)."""
    window = raw.get("sliding_window")
    if model_type in ("qwen2", "qwen3"):
        if not raw.get("use_sliding_window", False) or window is None:
            return (None,) * layers
        types = raw.get("layer_types")
        if types is None:
            first_full = int(raw.get("max_window_layers", layers))
            types = [
                "full_attention" if i < first_full else "sliding_attention" for i in range(layers)
            ]
        return tuple(int(window) if t == "sliding_attention" else None for t in types)
    return (int(window) if window else None,) * layers
