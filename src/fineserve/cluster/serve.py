"""What `fineserve serve --placement FILE` needs from a placement file: validated, with every
served model's folder resolved, and the gateway over its workers.

`load_served_placement(path)` raises `ValueError` naming the first problem (missing or
unreadable file, not a placement, no instance, a model without a folder, a folder without
`config.json`). A relative model path is looked up next to the placement file first, then in
the current directory (``fineserve plan`` copies paths as written in its config).
`serve_config(placement, **knobs)` is the `ServeConfig` every worker starts from (arena, policy,
seeds...); its models are the placed ones, with the placement's SLOs.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from fineserve.scheduler.placement.fileformat import PlacementFile, load_placement_file


def _read(path: Path) -> PlacementFile:
    import yaml

    if not path.is_file():
        raise ValueError(f"placement file {str(path)!r} does not exist")
    try:
        return load_placement_file(path)
    except (ValueError, OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: not a valid placement file: {detail}") from None


def _folder(raw: str, base: Path) -> Path:
    p = Path(raw).expanduser()
    if p.is_absolute():
        return p
    beside = base / p
    return beside if beside.exists() else p.resolve()


def served_models(placement: PlacementFile) -> list[str]:
    """Names of the models with at least one instance, sorted."""
    return sorted({i.model for i in placement.instances})


def load_served_placement(path: str | Path, check_folders: bool = True) -> PlacementFile:
    """Read and validate a placement for serving (see the module docstring)."""
    p = Path(path)
    placement = _read(p)
    if not placement.instances:
        raise ValueError(f"{p}: the placement has no instances (nothing to serve)")
    models = dict(placement.models)
    for name in served_models(placement):
        entry = models[name]
        if entry.path is None:
            if not check_folders:
                continue
            raise ValueError(f"{p}: model {name!r} has no path (serving needs its model folder)")
        folder = _folder(entry.path, p.parent.resolve())
        if check_folders and not (folder / "config.json").is_file():
            raise ValueError(
                f"{p}: model {name!r}: {folder} is not a model folder (no config.json)"
            )
        models[name] = replace(entry, path=str(folder))
    return replace(placement, models=models)


def serve_config(placement: PlacementFile, **knobs: Any) -> Any:
    """The base `ServeConfig` of the workers (``knobs`` = its other fields, None = default)."""
    from fineserve.server.config import ModelConfig, ServeConfig

    models = tuple(
        ModelConfig(
            name=name,
            path=Path(placement.models[name].path or "."),
            slo_ttft_s=placement.models[name].ttft_slo_s,
            slo_tpot_s=placement.models[name].tpot_slo_s,
        )
        for name in served_models(placement)
    )
    return ServeConfig(models=models, **{k: v for k, v in knobs.items() if v is not None})


def describe(placement: PlacementFile) -> list[str]:
    """One line per worker: its GPU group and the models it hosts."""
    return [
        f"  worker {'+'.join(gpus)}: {', '.join(sorted({i.model for i in insts}))}"
        for gpus, insts in sorted(placement.groups().items())
    ]
