"""`fineserve bench serve`: load any OpenAI-compatible server and report SLO attainment.

    fineserve bench serve --url http://127.0.0.1:8000 \
        --workload poisson:rate=4,duration=30,alpha=1.2,lengths=synthetic,max_output=64 \
        --slo llama=0.5,0.1 --json --plot out.png

Workload specs are described in `fineserve.workload.client_workload`. Models default to the
server's `/v1/models`. Progress is live on stderr; the table (or, with `--json`, the JSON
result) goes to stdout. Bounded by the spec's `duration`/`n` and by `--timeout` per request.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="server base URL (with or without /v1)")
    parser.add_argument("--workload", required=True, help="KIND[:k=v,...] or a YAML/JSON file")
    parser.add_argument("--api-key", default=None, help="bearer key (or $OPENAI_API_KEY)")
    parser.add_argument("--endpoint", default="completions", choices=("completions", "chat"))
    parser.add_argument("--slo", action="append", default=[], metavar="MODEL=TTFT[,TPOT]",
                        help="per-model SLOs in seconds (overrides the spec's)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    parser.add_argument("--max-concurrency", type=int, default=0, help="0 = unbounded")
    parser.add_argument("--no-ignore-eos", action="store_true", help="do not send ignore_eos")
    parser.add_argument("--json", action="store_true", help="print the JSON result")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG plot here")
    parser.add_argument("--quiet", action="store_true", help="no live progress")


def parse_slos(items: list[str]) -> dict[str, tuple[float | None, float | None]]:
    from fineserve.cli import CliError

    out: dict[str, tuple[float | None, float | None]] = {}
    for item in items:
        name, eq, rest = item.partition("=")
        parts = rest.split(",")
        try:
            ttft = float(parts[0]) if parts[0] else None
            tpot = float(parts[1]) if len(parts) > 1 and parts[1] else None
        except ValueError:
            raise CliError(f"--slo {item!r}: want MODEL=TTFT[,TPOT] in seconds") from None
        if not eq or not name:
            raise CliError(f"--slo {item!r}: want MODEL=TTFT[,TPOT]")
        out[name] = (ttft, tpot)
    return out


async def run_bench(args: argparse.Namespace, console: Any) -> dict[str, Any]:
    """Plan, send, summarize; returns the JSON-ready result (records kept for the plot)."""
    import os

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from fineserve.workload.client import ClientConfig, run_plan, served_models
    from fineserve.workload.client_workload import build_plan, describe, parse_spec
    from fineserve.workload.metrics import measurement_window, summarize

    key = args.api_key or os.environ.get("OPENAI_API_KEY")
    spec = parse_spec(args.workload)
    spec = replace(spec, slos={**spec.slos, **parse_slos(args.slo)})
    served = [] if spec.models else await served_models(args.url, key)
    plan = build_plan(spec, served)
    cfg = ClientConfig(args.url, key, args.endpoint, args.timeout, args.max_concurrency,
                       ignore_eos=not args.no_ignore_eos)  # fmt: skip
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=args.quiet, transient=True) as progress:
        task = progress.add_task(f"{len(plan)} requests", total=len(plan))
        failed = [0]

        def done(rec: Any) -> None:
            failed[0] += rec.error is not None
            desc = f"{len(plan)} requests, {failed[0]} failed"
            progress.update(task, advance=1, description=desc)

        records, wall = await run_plan(plan, cfg, done)
    summary = summarize(records, measurement_window(records))
    return {"workload": describe(spec), "url": args.url, "wall_s": wall, "summary": summary,
            "_records": records}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import asyncio

    import httpx
    from rich.console import Console

    from fineserve.cli import CliError
    from fineserve.workload.client_report import errors_by_kind, summary_table, write_plot

    console = Console(stderr=True)
    try:
        result = asyncio.run(run_bench(args, console))
    except (ValueError, OSError, httpx.HTTPError) as exc:
        raise CliError(str(exc)) from None
    records = result.pop("_records")
    result["errors"] = errors_by_kind(records)
    if args.plot is not None:
        result["plot"] = str(write_plot(records, result["summary"], args.plot, args.workload))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        Console().print(summary_table(result["summary"], f"bench serve: {args.workload}"))
        for message, count in result["errors"].items():
            print(f"  {count} x {message}")
    return 0
