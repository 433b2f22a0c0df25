"""Workload specs for the load client: `KIND[:key=value,...]` or a YAML/JSON file of the keys.

Kinds: `poisson`, `gamma` (`cv`), `azure` (`service=conv|code`), `mooncake`
(`trace=conversation|synthetic`). Keys: `rate` (req/s over all models; for a trace, the target
mean rate after time-scaling), `scale` (trace time compression, instead of `rate`), `duration`
(s), `n` (at most this many requests), `models` (`a+b+c`; default: the server's), `alpha`
(power-law popularity, share of rank i ~ (i+1)^-alpha), `lengths` (`trace`, `sharegpt`,
`synthetic`, `fixed`, or a CSV table path with prompt/output columns), `prompt`/`output` (for
`fixed`), `max_prompt`/`max_output` (clamps), `length_scale`, `slo_ttft`/`slo_tpot` (s, every
model), `start` (offset into a trace, s), `seed`, `data` (data folder).

Invariant: the same spec and models give the same plan (all randomness is seeded).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from fineserve.workload.client import PlannedRequest
from fineserve.workload.traces import TraceRequest

KINDS = ("poisson", "gamma", "azure", "mooncake")
LENGTH_SOURCES = ("trace", "sharegpt", "synthetic", "fixed")


@dataclass(frozen=True)
class WorkloadSpec:
    """A parsed spec (see the module docstring)."""

    kind: str = "poisson"
    rate: float | None = None
    scale: float | None = None
    duration: float = 30.0
    n: int | None = None
    cv: float = 1.0
    models: tuple[str, ...] = ()
    alpha: float = 1.0
    lengths: str | None = None
    prompt: int = 128
    output: int = 64
    max_prompt: int | None = None
    max_output: int | None = None
    length_scale: float = 1.0
    slo_ttft: float | None = None
    slo_tpot: float | None = None
    start: float = 0.0
    seed: int = 0
    service: str = "conv"
    trace: str = "conversation"
    data: str | None = None
    slos: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown workload kind {self.kind!r}; use one of {KINDS}")
        if not self.duration > 0:
            raise ValueError("duration must be > 0")
        if self.n is not None and self.n < 1:
            raise ValueError("n must be >= 1")


_FIELDS = {f.name: f for f in fields(WorkloadSpec)} | {}


def _convert(key: str, value: Any) -> Any:
    if key not in _FIELDS or key == "slos":
        raise ValueError(f"unknown workload key {key!r}; keys: {sorted(set(_FIELDS) - {'slos'})}")
    if key == "models":
        return (
            tuple(value) if isinstance(value, list) else tuple(filter(None, str(value).split("+")))
        )
    kind = str(_FIELDS[key].type)
    try:
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
    except ValueError:
        raise ValueError(f"workload key {key}: {value!r} is not a number") from None
    return str(value)


def parse_spec(text: str) -> WorkloadSpec:
    """`KIND[:k=v,...]`, or a path to a .yaml/.yml/.json file holding the same keys."""
    path = Path(text)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        import yaml

        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of workload keys")
        return WorkloadSpec(**{k: _convert(k, v) for k, v in raw.items()})
    kind, _, rest = text.partition(":")
    values: dict[str, Any] = {"kind": kind.strip()}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"workload option {item!r} is not key=value")
        values[key.strip()] = _convert(key.strip(), value.strip())
    return WorkloadSpec(**values)


def _load_trace(spec: WorkloadSpec) -> list[TraceRequest]:
    from fineserve.workload.data import resolve_data_dir
    from fineserve.workload.traces import load_azure, load_mooncake

    data_dir = resolve_data_dir(spec.data)
    if data_dir is None:
        raise ValueError("trace replay needs the data folder (../shared/data or data=PATH)")
    if spec.kind == "azure":
        return load_azure(data_dir, spec.service)
    return load_mooncake(data_dir, spec.trace)


def _arrivals(spec: WorkloadSpec, models: int) -> tuple[list[float], list[TraceRequest] | None]:
    """Arrival times within the window, and the trace requests behind them (traces only)."""
    from fineserve.workload.arrivals import gamma_arrivals

    if spec.kind in ("poisson", "gamma"):
        rate = spec.rate if spec.rate is not None else 1.0
        cv = 1.0 if spec.kind == "poisson" else spec.cv
        times = gamma_arrivals(rate, cv, duration_s=spec.duration, seed=spec.seed)
        return times[: spec.n] if spec.n else times, None
    trace = [r for r in _load_trace(spec) if r.arrival_s >= spec.start]
    if not trace:
        raise ValueError(f"the trace has no requests after start={spec.start}")
    base = trace[0].arrival_s
    span = max(trace[-1].arrival_s - base, 1e-9)
    scale = spec.scale
    if scale is None:
        scale = 1.0 if spec.rate is None else spec.rate / (len(trace) / span)
    picked = []
    for r in trace:
        t = (r.arrival_s - base) / scale
        if t >= spec.duration or (spec.n and len(picked) >= spec.n):
            break
        picked.append(TraceRequest(t, r.prompt_tokens, r.output_tokens))
    return [r.arrival_s for r in picked], picked


def _length_table(spec: WorkloadSpec, trace: list[TraceRequest] | None) -> list[tuple[int, int]]:
    source = spec.lengths or ("trace" if trace is not None else "fixed")
    if source == "fixed":
        return [(spec.prompt, spec.output)]
    if source == "trace":
        if trace is None:
            raise ValueError("lengths=trace needs a trace workload (azure, mooncake)")
        return [(r.prompt_tokens, r.output_tokens) for r in trace]
    if source == "synthetic":
        from fineserve.workload.synthetic import synthetic_sharegpt_lengths

        return synthetic_sharegpt_lengths(4096, seed=spec.seed)
    if source == "sharegpt":
        from fineserve.workload.data import resolve_data_dir
        from fineserve.workload.traces import load_sharegpt_lengths

        data_dir = resolve_data_dir(spec.data)
        if data_dir is None:
            raise ValueError("lengths=sharegpt needs the data folder; try lengths=synthetic")
        return load_sharegpt_lengths(data_dir)
    return read_length_table(Path(source))


def read_length_table(path: Path) -> list[tuple[int, int]]:
    """(prompt, output) pairs from a CSV with columns prompt,output (or *prefill*/*decode*)."""
    if not path.is_file():
        raise ValueError(f"lengths {str(path)!r}: not {LENGTH_SOURCES} nor a CSV file")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path}: empty length table")
    cols = list(rows[0])
    p = next((c for c in cols if "prompt" in c or "prefill" in c or "input" in c), None)
    o = next((c for c in cols if "output" in c or "decode" in c or "generat" in c), None)
    if p is None or o is None:
        raise ValueError(f"{path}: need prompt and output columns, got {cols}")
    return [(max(1, int(float(r[p]))), max(1, int(float(r[o])))) for r in rows]


def _clamp(value: int, scale: float, limit: int | None) -> int:
    v = max(1, round(value * scale))
    return min(v, limit) if limit is not None else v


def build_plan(spec: WorkloadSpec, served: Sequence[str]) -> list[PlannedRequest]:
    """The requests of `spec` over `spec.models` (else `served`), sorted by send time."""
    models = list(spec.models or served)
    if not models:
        raise ValueError("no models: the server lists none and the spec names none")
    times, trace = _arrivals(spec, len(models))
    from fineserve.workload.arrivals import power_law_shares

    rng = np.random.default_rng(spec.seed + 1)
    shares = power_law_shares(len(models), spec.alpha)
    owner = rng.choice(len(models), size=len(times), p=shares)
    table = _length_table(spec, trace)
    in_order = spec.lengths in (None, "trace") and trace is not None
    picks = range(len(times)) if in_order else rng.integers(0, len(table), size=len(times))
    plan = []
    for t, m, j in zip(times, owner, picks, strict=True):
        name = models[int(m)]
        p, o = table[int(j)]
        ttft, tpot = spec.slos.get(name, (spec.slo_ttft, spec.slo_tpot))
        plan.append(PlannedRequest(float(t), name,
                                   _clamp(p, spec.length_scale, spec.max_prompt),
                                   _clamp(o, spec.length_scale, spec.max_output),
                                   ttft, tpot))  # fmt: skip
    return plan


def describe(spec: WorkloadSpec) -> dict[str, Any]:
    """The spec as JSON-ready data (for result files)."""
    out = {f.name: getattr(spec, f.name) for f in fields(spec)}
    out["models"] = list(spec.models)
    out["slos"] = {k: list(v) for k, v in spec.slos.items()}
    return json.loads(json.dumps(out))
