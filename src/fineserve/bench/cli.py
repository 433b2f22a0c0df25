"""`fineserve bench NAME ...`: dispatch to one benchmark module.

Each benchmark module exposes `add_arguments(parser)` and `run(args) -> int` and imports
nothing heavy at module level.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS: dict[str, tuple[str, str]] = {
    "memory": ("fineserve.bench.memory", "KV memory schemes under a trace-driven workload"),
    "local": ("fineserve.bench.local", "local scheduler policies on the real CPU engine"),
    "serve": ("fineserve.bench.serve", "load an OpenAI-compatible server, report SLO attainment"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    for name, (module_name, help_text) in BENCHMARKS.items():
        bench_parser = sub.add_parser(name, help=help_text)
        bench_parser.set_defaults(_bench_module=module_name)
        importlib.import_module(module_name).add_arguments(bench_parser)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._bench_module).run(args) or 0)
