"""The placement file written by ``fineserve plan --out`` and read by ``fineserve serve``.

A YAML (or JSON, by extension) mapping, version 1; docs/placement.md describes every field.
:func:`placement_document` builds it, :func:`parse_placement_document` validates one and returns
a :class:`PlacementFile` (frozen); :func:`load_placement_file` reads it from disk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fineserve.scheduler.placement.problem import PlacementProblem
from fineserve.scheduler.placement.types import InstancePlacement, Placement

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ServedModelEntry:
    """A model as the server needs it: where its weights are and its SLOs."""

    name: str
    arch: str
    qformat: str
    path: str | None
    rate: float
    ttft_slo_s: float
    tpot_slo_s: float | None
    max_model_len: int


@dataclass(frozen=True)
class PlacementFile:
    """A parsed placement file. Invariant: every instance's model is in ``models``."""

    policy: str
    kv_scheme: str
    models: Mapping[str, ServedModelEntry]
    instances: tuple[InstancePlacement, ...]
    gpu_memory_bytes: int

    def groups(self) -> dict[tuple[str, ...], list[InstancePlacement]]:
        """Instances by GPU group: one engine (actor) per group hosts its co-located models."""
        out: dict[tuple[str, ...], list[InstancePlacement]] = {}
        for inst in self.instances:
            out.setdefault(inst.gpus, []).append(inst)
        return out


def placement_document(problem: PlacementProblem, placement: Placement) -> dict[str, Any]:
    """The full placement file as a plain mapping (YAML/JSON-ready)."""
    c = problem.cluster
    return {
        "fineserve_placement": FORMAT_VERSION,
        "policy": placement.policy,
        "kv_scheme": placement.kv_scheme,
        "cluster": {
            "nodes": c.nodes,
            "gpus_per_node": c.gpus_per_node,
            "gpu_memory_bytes": c.gpu_memory_bytes,
            "reserve_bytes": c.reserve_bytes,
        },
        "models": {
            m.name: {
                "arch": m.arch,
                "qformat": m.qformat,
                "path": m.path,
                "rate": m.rate,
                "ttft_slo_s": m.ttft_slo_s,
                "tpot_slo_s": m.tpot_slo_s,
                "max_model_len": m.prompt_len + m.output_len,
            }
            for m in problem.models
        },
        "instances": [
            {
                "model": i.model,
                "tp": i.tp,
                "replica": i.replica,
                "gpus": list(i.gpus),
                "rate": round(i.rate, 6),
                "min_batch": i.min_batch,
                "max_batch": i.max_batch,
            }
            for i in placement.instances
        ],
        "gpus": {
            g: {
                "memory_bytes": u.memory_bytes,
                "used_bytes": u.used_bytes,
                "kv_need_bytes": u.kv_need_bytes,
                "headroom_bytes": u.headroom_bytes,
                "util": round(u.util, 6),
            }
            for g, u in placement.gpus.items()
        },
        "predicted": {
            "slo_attainment": round(placement.predicted.slo_attainment, 6),
            "goodput": round(placement.predicted.goodput, 6),
            "per_model": {k: round(v, 6) for k, v in placement.predicted.per_model.items()},
        },
        "unplaced": list(placement.unplaced),
    }


def _model_entry(name: str, e: Mapping[str, Any]) -> ServedModelEntry:
    tpot = e.get("tpot_slo_s")
    return ServedModelEntry(
        name=name,
        arch=str(e.get("arch", name)),
        qformat=str(e.get("qformat", "fp16")),
        path=None if e.get("path") is None else str(e["path"]),
        rate=float(e.get("rate", 0.0)),
        ttft_slo_s=float(e.get("ttft_slo_s", 1.0)),
        tpot_slo_s=None if tpot is None else float(tpot),
        max_model_len=int(e.get("max_model_len", 2048)),
    )


def parse_placement_document(doc: Mapping[str, Any]) -> PlacementFile:
    """Validate a placement mapping; ValueError naming the first problem."""
    if doc.get("fineserve_placement") != FORMAT_VERSION:
        raise ValueError(f"not a version-{FORMAT_VERSION} FineServe placement file")
    models = {str(k): _model_entry(str(k), v) for k, v in (doc.get("models") or {}).items()}
    instances = []
    for k, e in enumerate(doc.get("instances") or []):
        if e.get("model") not in models:
            raise ValueError(f"instances[{k}]: unknown model {e.get('model')!r}")
        gpus = tuple(str(g) for g in e.get("gpus") or ())
        if len(gpus) != int(e.get("tp", 1)):
            raise ValueError(f"instances[{k}]: {len(gpus)} GPUs for tp={e.get('tp')}")
        instances.append(
            InstancePlacement(
                str(e["model"]),
                int(e.get("tp", 1)),
                int(e.get("replica", 0)),
                gpus,
                float(e.get("rate", 0.0)),
                int(e.get("min_batch", 1)),
                int(e.get("max_batch", 256)),
            )
        )
    cluster = doc.get("cluster") or {}
    return PlacementFile(
        policy=str(doc.get("policy", "")),
        kv_scheme=str(doc.get("kv_scheme", "slab")),
        models=models,
        instances=tuple(instances),
        gpu_memory_bytes=int(cluster.get("gpu_memory_bytes", 0)),
    )


def load_placement_file(path: str | Path) -> PlacementFile:
    """Read and validate a placement file (``.json`` as JSON, anything else as YAML)."""
    p = Path(path)
    text = p.read_text()
    if p.suffix == ".json":
        doc = json.loads(text)
    else:
        import yaml

        doc = yaml.safe_load(text)
    if not isinstance(doc, Mapping):
        raise ValueError(f"{p}: a placement file is a mapping")
    return parse_placement_document(doc)


def dump_placement_document(doc: Mapping[str, Any], path: str | Path) -> None:
    """Write ``doc`` as JSON (``.json``) or YAML."""
    p = Path(path)
    if p.suffix == ".json":
        p.write_text(json.dumps(doc, indent=2) + "\n")
    else:
        import yaml

        p.write_text(yaml.safe_dump(dict(doc), sort_keys=False))
