"""Server configuration: the models to serve and the HTTP knobs (frozen dataclasses, no I/O
except `load_deploy_file`, which reads the YAML it is given).

`--model NAME=PATH[:slo_ttft=0.5,slo_tpot=0.1,kv_dtype=fp8,max_queue=64]` and a deploy YAML

    host: 127.0.0.1
    port: 8000
    arena_mb: 64
    models:
      - {name: llama-fp16, path: /models/a, slo_ttft: 0.5, slo_tpot: 0.1}

describe the same `ServeConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

MODEL_OPTIONS = ("slo_ttft", "slo_tpot", "kv_dtype", "dtype", "max_queue", "qformat")


@dataclass(frozen=True)
class ModelConfig:
    """One served model. SLOs in seconds (None = no objective); `max_queue`: requests of this
    model in flight at most before new ones get 429."""

    name: str
    path: Path
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    dtype: str | None = None
    kv_dtype: str | None = None
    qformat: str | None = None
    max_queue: int = 256

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError(f"bad model name {self.name!r}")
        for attr in ("slo_ttft_s", "slo_tpot_s"):
            value = getattr(self, attr)
            if value is not None and not value > 0:
                raise ValueError(f"model {self.name!r}: {attr} must be > 0")
        if self.max_queue < 1:
            raise ValueError(f"model {self.name!r}: max_queue must be >= 1")


@dataclass(frozen=True)
class ServeConfig:
    """Everything `fineserve serve` needs. `api_key` None = no authentication."""

    models: tuple[ModelConfig, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    arena_bytes: int = 64 << 20
    policy: str = "saab"
    token_budget: int = 512
    max_body_bytes: int = 4 << 20
    drain_timeout_s: float = 30.0
    tokens_per_page: int = 16
    scheme: str = "slab"
    seed: int | None = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("serve at least one model (--model NAME=PATH or a deploy file)")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65536), got {self.port}")


def _number(key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{key} must be a number, got {text!r}") from None


def _model_from_options(name: str, path: str, options: dict[str, Any]) -> ModelConfig:
    unknown = sorted(set(options) - set(MODEL_OPTIONS))
    if unknown:
        raise ValueError(f"model {name!r}: unknown option(s) {unknown}; use {MODEL_OPTIONS}")
    ttft, tpot = options.get("slo_ttft"), options.get("slo_tpot")
    return ModelConfig(
        name=name,
        path=Path(path).expanduser(),
        slo_ttft_s=None if ttft is None else _number("slo_ttft", str(ttft)),
        slo_tpot_s=None if tpot is None else _number("slo_tpot", str(tpot)),
        dtype=options.get("dtype"),
        kv_dtype=options.get("kv_dtype"),
        qformat=options.get("qformat"),
        max_queue=int(_number("max_queue", str(options.get("max_queue", 256)))),
    )


def parse_model_arg(text: str) -> ModelConfig:
    """`NAME=PATH[:key=value,key=value]` -> `ModelConfig` (ValueError naming the problem)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--model wants NAME=PATH[:slo_ttft=..,slo_tpot=..], got {text!r}")
    path, _, opts = rest.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"model option {item!r} is not key=value")
        options[key.strip()] = value.strip()
    return _model_from_options(name.strip(), path, options)


SERVE_KEYS = {f.name for f in fields(ServeConfig)} - {"models", "extra", "arena_bytes"}


def config_from_dict(data: dict[str, Any], base: Path | None = None) -> ServeConfig:
    """A deploy mapping (see the module docstring); relative model paths are taken from `base`."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ValueError("a deploy file needs a 'models:' list")
    models = []
    for entry in data["models"]:
        if not isinstance(entry, dict) or "name" not in entry or "path" not in entry:
            raise ValueError(f"each model needs name and path, got {entry!r}")
        opts = {k: v for k, v in entry.items() if k not in ("name", "path")}
        path = Path(str(entry["path"])).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        models.append(_model_from_options(str(entry["name"]), str(path), opts))
    known = {k: v for k, v in data.items() if k in SERVE_KEYS}
    extra = {k: v for k, v in data.items() if k not in SERVE_KEYS | {"models", "arena_mb"}}
    config = ServeConfig(models=tuple(models), extra=extra, **known)
    if "arena_mb" in data:
        config = replace(config, arena_bytes=int(float(data["arena_mb"]) * (1 << 20)))
    return config


def load_deploy_file(path: Path) -> ServeConfig:
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    return config_from_dict(data, base=Path(path).resolve().parent)
