"""`fineserve plan --config cluster.yaml [--policy P] [--json] [--out placement.yaml]`.

Reads the configuration (docs/placement.md), places the models, prints a table (or, with
``--json``, exactly ``{"policy", "instances", "gpus", "predicted": {"slo_attainment"}}``) and
writes the placement file for ``fineserve serve --placement FILE``. Nothing heavy is imported
at module level.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

POLICY_NAMES = ("fineserve", "prism", "muxserve", "one_per_gpu", "milp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="cluster/models YAML (docs/placement.md)")
    parser.add_argument("--policy", default="fineserve", choices=POLICY_NAMES)
    parser.add_argument("--json", action="store_true", help="print the placement as JSON")
    parser.add_argument("--out", default=None, help="write the placement file here (.yaml/.json)")
    parser.add_argument(
        "--allow-unplaced",
        action="store_true",
        help="succeed even when some model does not fit beside the others",
    )


def resolve_model_folder(path: Path) -> Any:
    """Architecture, weight bytes and quantization of a Hugging Face folder."""
    from fineserve.costmodel.roofline import ModelSpec
    from fineserve.scheduler.placement.config import ResolvedModel

    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path}: no config.json (is it a Hugging Face model folder?)")
    cfg = json.loads(cfg_path.read_text())
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    quant = cfg.get("quantization_config") or {}
    method = str(quant.get("quant_method", "")).lower()
    qformat = {"awq": "awq", "gptq": "gptq", "fp8": "fp8"}.get(method)
    if qformat is None:
        qformat = "bf16" if cfg.get("torch_dtype", cfg.get("dtype")) == "bfloat16" else "fp16"
    spec = ModelSpec.from_hf_config(cfg)
    return ResolvedModel(path.name, spec, max(weights, 1), qformat)


def load_problem(config_path: Path) -> Any:
    """Read the YAML and every model folder it names, then build the problem."""
    import yaml

    from fineserve.cli import CliError
    from fineserve.scheduler.placement.config import ConfigError, problem_from_config

    if not config_path.is_file():
        raise CliError(f"config file {str(config_path)!r} does not exist")
    try:
        doc = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as exc:
        raise CliError(f"{config_path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise CliError(f"{config_path}: the configuration must be a mapping")
    resolved = {}
    for entry in doc.get("models") or []:
        if isinstance(entry, dict) and "path" in entry:
            folder = Path(str(entry["path"]))
            if not folder.is_absolute():
                folder = config_path.parent / folder
            try:
                resolved[str(entry["path"])] = resolve_model_folder(folder)
            except (OSError, ValueError, KeyError) as exc:
                raise CliError(f"model folder {entry['path']!r}: {exc}") from None
    try:
        return problem_from_config(doc, resolved)
    except ConfigError as exc:
        raise CliError(f"{config_path}: {exc}") from None


def print_table(problem: Any, placement: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    gib = 2**30
    table = Table(title=f"placement: {placement.policy} ({placement.kv_scheme} KV)")
    for col in ("model", "qformat", "tp", "replica", "gpus", "rate/s", "batch", "attain"):
        table.add_column(col)
    for i in placement.instances:
        m = problem.model(i.model)
        table.add_row(
            i.model, m.qformat, str(i.tp), str(i.replica), ",".join(i.gpus), f"{i.rate:.2f}",
            f"{i.min_batch}-{i.max_batch}", f"{placement.predicted.per_model[i.model]:.3f}",
        )  # fmt: skip
    gpus = Table(title="GPUs")
    for col in ("gpu", "used GiB", "KV need GiB", "headroom GiB", "busy"):
        gpus.add_column(col)
    for g, u in placement.gpus.items():
        gpus.add_row(
            g, f"{u.used_bytes / gib:.1f}", f"{u.kv_need_bytes / gib:.1f}",
            f"{u.headroom_bytes / gib:.1f}", f"{u.util:.2f}",
        )  # fmt: skip
    console = Console()
    console.print(table)
    console.print(gpus)
    p = placement.predicted
    console.print(f"predicted SLO attainment {p.slo_attainment:.3f}, goodput {p.goodput:.2f} req/s")
    if placement.unplaced:
        console.print(f"[red]unplaced: {', '.join(placement.unplaced)}[/red]")


def run(args: argparse.Namespace) -> int:
    from fineserve.cli import CliError
    from fineserve.scheduler.placement.fileformat import (
        dump_placement_document,
        placement_document,
    )
    from fineserve.scheduler.placement.problem import InfeasibleError
    from fineserve.scheduler.placement.registry import place

    problem = load_problem(Path(args.config))
    try:
        placement = place(problem, args.policy)
    except InfeasibleError as exc:
        raise CliError(f"infeasible: {exc}") from None
    if placement.unplaced and not args.allow_unplaced:
        raise CliError(
            f"the cluster ({problem.cluster.num_gpus} GPUs) cannot hold every model with policy "
            f"{args.policy!r}: no room for {', '.join(placement.unplaced)} beside the others; "
            "add GPUs, lower rates, or pass --allow-unplaced"
        )
    if args.out:
        dump_placement_document(placement_document(problem, placement), args.out)
    if args.json:
        print(json.dumps(placement.to_json()))
    else:
        print_table(problem, placement)
        if args.out:
            print(f"wrote {args.out}")
    return 0
