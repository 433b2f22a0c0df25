"""The `fineserve` command line.

Each subcommand lives in its own module that exposes `add_arguments(parser)` and
`run(args) -> int`; `COMMANDS` maps the subcommand name to that module, imported only when the
subcommand runs. A user error raises `CliError` and is printed as one line naming the problem.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "profile": ("fineserve.bench.profile", "measure the CPU engine's step times into a cost table"),
    "bench": ("fineserve.bench.cli", "run a benchmark (memory, local, ...)"),
    "demo": ("fineserve.bench.demo", "run the embedded CPU demo"),
    "make-model": ("fineserve.execution.make_model", "write a random-weight HF model folder"),
    "sim": ("fineserve.sim.cli", "simulate a GPU cluster: paper comparison, drift, validation"),
    "serve": ("fineserve.server.cli", "OpenAI-compatible server for several models"),
    "plan": ("fineserve.scheduler.placement.plan_cli", "place models on a cluster's GPUs"),
}


class CliError(Exception):
    """A problem with the user's input, reported without a stack trace."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fineserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        sub_parser.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except CliError as exc:
        print(f"fineserve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
