"""The ``fineserve plan`` configuration (a YAML mapping) turned into a :class:`PlacementProblem`.

Pure: takes the parsed mapping; model folders named by ``path`` must already be resolved into
``resolved`` (architecture spec and weight bytes) by the caller, which does the file reading.
Schema (see docs/placement.md)::

    cluster: {nodes: 2, gpus_per_node: 8, gpu_memory_gib: 80, reserve_gib: 4}
    cost_model: h100                     # any make_cost_model name
    options: {max_batch: 256, util_cap: 0.85, target_attainment: 0.95}
    defaults: {prompt_len: 512, output_len: 256, ttft_slo_ms: 1000, tpot_slo_ms: 100, tp: [1, 2]}
    rates: {total: 40, alpha: 0.9}        # power-law split for models without a rate
    models:
      - {name: llama-8b-awq, arch: llama-3.1-8b, qformat: awq, copies: 2, rate: 3.0, tp: 1}
      - {name: tiny, path: /models/tiny, ttft_slo_ms: 500}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fineserve.costmodel.base import normalize_qformat
from fineserve.costmodel.registry import make_cost_model
from fineserve.costmodel.roofline import KNOWN_MODELS, ModelSpec
from fineserve.scheduler.placement.problem import (
    GIB,
    ClusterSpec,
    InfeasibleError,
    ModelDemand,
    PlacementOptions,
    PlacementProblem,
    kv_formats_for,
    weight_bytes_for,
)
from fineserve.workload.arrivals import power_law_shares

MODEL_KEYS = {
    "name", "arch", "path", "qformat", "copies", "rate", "ttft_slo_ms", "tpot_slo_ms", "tp",
    "prompt_len", "output_len", "weight_gib", "spec",
}  # fmt: skip


class ConfigError(ValueError):
    """The configuration is malformed; the message names the field."""


@dataclass(frozen=True)
class ResolvedModel:
    """What the caller read from a model folder: architecture, weight bytes, default qformat."""

    arch: str
    spec: ModelSpec
    weight_bytes: int
    qformat: str = "fp16"


def _tp_options(value: Any) -> tuple[int, ...]:
    tps = (value,) if isinstance(value, int) else tuple(value)
    if not tps or any(not isinstance(t, int) or t < 1 for t in tps):
        raise ConfigError(f"tp must be a positive integer or a list of them, got {value!r}")
    return tps


def _spec(
    entry: Mapping[str, Any], resolved: Mapping[str, ResolvedModel]
) -> tuple[str, ModelSpec, int | None, str]:
    """(arch name, spec, weight bytes or None, default qformat) of one model entry."""
    if "path" in entry:
        r = resolved.get(str(entry["path"]))
        if r is None:
            raise ConfigError(f"model folder {entry['path']!r} was not resolved")
        return r.arch, r.spec, r.weight_bytes, r.qformat
    if "spec" in entry:
        try:
            spec = ModelSpec(**entry["spec"])
        except TypeError as exc:
            raise ConfigError(f"model {entry.get('name')!r}: bad spec: {exc}") from None
        return str(entry.get("arch", entry.get("name"))), spec, None, "fp16"
    arch = entry.get("arch")
    if arch not in KNOWN_MODELS:
        raise ConfigError(
            f"model {entry.get('name')!r}: give path, spec, or arch in {sorted(KNOWN_MODELS)}"
        )
    return str(arch), KNOWN_MODELS[arch], None, "fp16"


def _expand(models: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k, entry in enumerate(models):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"models[{k}] must be a mapping")
        unknown = set(entry) - MODEL_KEYS
        if unknown:
            raise ConfigError(f"models[{k}]: unknown keys {sorted(unknown)}")
        name = entry.get("name") or entry.get("arch") or f"model{k}"
        copies = int(entry.get("copies", 1))
        for c in range(copies):
            out.append({**entry, "name": f"{name}-{c}" if copies > 1 else str(name)})
    return out


def _rates(entries: Sequence[Mapping[str, Any]], rates: Mapping[str, Any]) -> list[float]:
    missing = [e for e in entries if "rate" not in e]
    if missing and "total" not in rates:
        raise ConfigError(f"model {missing[0]['name']!r} has no rate and rates.total is not set")
    shares = power_law_shares(len(missing), float(rates.get("alpha", 1.0))) if missing else []
    it = iter(shares)
    return [float(e["rate"]) if "rate" in e else float(rates["total"]) * next(it) for e in entries]


def _model(
    e: Mapping[str, Any], rate: float, d: Mapping[str, Any], resolved: Mapping[str, ResolvedModel]
) -> tuple[ModelDemand, ModelSpec]:
    arch, spec, wbytes, default_q = _spec(e, resolved)
    q = normalize_qformat(str(e.get("qformat", default_q)))
    tps = _tp_options(e.get("tp", d.get("tp", (1, 2, 4, 8))))
    if "weight_gib" in e:
        wbytes = int(float(e["weight_gib"]) * GIB)
    tpot = e.get("tpot_slo_ms", d.get("tpot_slo_ms"))
    try:
        demand = ModelDemand(
            name=str(e["name"]),
            arch=arch,
            qformat=q,
            weight_bytes=wbytes or weight_bytes_for(spec, q),
            kv_formats=kv_formats_for(spec, q, tps),
            rate=rate,
            ttft_slo_s=float(e.get("ttft_slo_ms", d.get("ttft_slo_ms", 1000))) / 1e3,
            tpot_slo_s=None if tpot is None else float(tpot) / 1e3,
            prompt_len=int(e.get("prompt_len", d.get("prompt_len", 512))),
            output_len=int(e.get("output_len", d.get("output_len", 256))),
            tp_options=tps,
            path=None if e.get("path") is None else str(e["path"]),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return demand, spec


def problem_from_config(
    doc: Mapping[str, Any], resolved: Mapping[str, ResolvedModel] | None = None
) -> PlacementProblem:
    """Build the problem (ConfigError for bad fields, InfeasibleError for missing costs)."""
    resolved = resolved or {}
    c = doc.get("cluster") or {}
    try:
        cluster = ClusterSpec(
            int(c.get("nodes", 1)),
            int(c.get("gpus_per_node", 8)),
            int(float(c.get("gpu_memory_gib", 80)) * GIB),
            int(float(c.get("reserve_gib", 4)) * GIB),
            str(c.get("gpu", "h100")),
        )
        opts = PlacementOptions(**(doc.get("options") or {}))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cluster/options: {exc}") from None
    entries = _expand(doc.get("models") or [])
    if not entries:
        raise ConfigError("the configuration lists no models")
    rates = _rates(entries, doc.get("rates") or {})
    d = doc.get("defaults") or {}
    built = [_model(e, r, d, resolved) for e, r in zip(entries, rates, strict=True)]
    models = tuple(m for m, _ in built)
    try:
        cost = make_cost_model(
            str(doc.get("cost_model", "h100")), models={m.arch: s for m, s in built}
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for m in models:
        for tp in m.tp_options:
            if not cost.supports(m.key(tp)):
                raise InfeasibleError(f"the cost model has no figures for {m.key(tp)}")
    return PlacementProblem(models, cluster, cost, opts)
