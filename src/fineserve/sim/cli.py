"""`fineserve sim`: run a simulator experiment or the fidelity check.

    fineserve sim --experiment paper [--quick] [--json] [--plot DIR] [--data-dir D] [--jobs N]
    fineserve sim --experiment drift [--quick] [--json]
    fineserve sim --validate [--json]

Light at import time: everything heavy is imported inside `run`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXPERIMENTS = ("paper", "drift")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", choices=EXPERIMENTS, help="experiment to run")
    parser.add_argument("--validate", action="store_true", help="sim vs real CPU engine")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--plot", metavar="DIR", help="write PNG plots into DIR")
    parser.add_argument("--quick", action="store_true", help="a small, fast version")
    parser.add_argument("--data-dir", metavar="D", help="shared data folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rates", help="comma-separated total rates (req/s), paper only")
    parser.add_argument("--slo-scales", help="comma-separated TTFT SLO scales, paper only")
    parser.add_argument("--duration", type=float, help="arrival window in seconds")
    parser.add_argument("--schemes", help="comma-separated schemes (default: all)")
    parser.add_argument(
        "--jobs",
        type=int,
        help="worker processes for the paper sweep's runs (default: the usable CPUs)",
    )


def _jobs(requested: int | None) -> int:
    """`--jobs`, or one worker per usable CPU; a CliError for a value below 1."""
    import os

    from fineserve.cli import CliError

    if requested is None:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    if requested < 1:
        raise CliError(f"--jobs must be at least 1, got {requested}")
    return requested


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    from fineserve.cli import CliError

    if text is None:
        return None
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise CliError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise CliError(f"{what} must be positive numbers, got {text!r}")
    return values


def _paper_config(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from fineserve.cli import CliError
    from fineserve.sim.experiments import PaperConfig
    from fineserve.sim.schemes import SCHEMES

    cfg = PaperConfig.quick() if args.quick else PaperConfig()
    changes: dict[str, Any] = {"seed": args.seed}
    rates = _floats(args.rates, "--rates")
    scales = _floats(args.slo_scales, "--slo-scales")
    if rates:
        changes["rates"] = rates
    if scales:
        changes["slo_scales"] = scales
    if args.duration is not None:
        if not args.duration > 0:
            raise CliError("--duration must be > 0")
        changes["duration_s"] = args.duration
    if args.schemes:
        names = tuple(s.strip() for s in args.schemes.split(",") if s.strip())
        unknown = [s for s in names if s not in SCHEMES]
        if unknown:
            raise CliError(f"unknown schemes {unknown}; choose from {sorted(SCHEMES)}")
        changes["schemes"] = names
    return replace(cfg, **changes)


def _progress(quiet: bool) -> Any:
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    return None if quiet else say


def run(args: argparse.Namespace) -> int:
    from fineserve.cli import CliError
    from fineserve.workload.data import resolve_data_dir

    if args.validate == bool(args.experiment):
        raise CliError("give exactly one of --experiment NAME or --validate")
    data_dir = resolve_data_dir(args.data_dir)
    if args.validate:
        from fineserve.bench.validate import format_validation, run_validation

        doc = run_validation(quick=args.quick, seed=args.seed, progress=_progress(False))
        print(json.dumps(doc, indent=1) if args.json else format_validation(doc))
        return 0
    if args.experiment == "paper":
        from fineserve.sim.experiments import run_paper
        from fineserve.sim.report import format_paper

        cfg = _paper_config(args)
        doc = run_paper(cfg, data_dir, progress=_progress(False), jobs=_jobs(args.jobs))
        text = format_paper(doc)
    else:
        from fineserve.sim.drift import DriftConfig, format_drift, run_drift

        cfg = DriftConfig.quick() if args.quick else DriftConfig()
        doc = run_drift(cfg, data_dir, progress=_progress(False))
        text = format_drift(doc)
    if args.plot:
        from fineserve.sim.report import write_plots

        for path in write_plots(doc, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(doc, indent=1) if args.json else text)
    return 0
