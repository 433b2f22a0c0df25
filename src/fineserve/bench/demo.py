"""`fineserve demo`: the embedded default job.

Until the serving demo exists, it runs the memory benchmark in its quick form and prints its
table.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="trace folder (default ../shared/data)")


def run(args: argparse.Namespace) -> int:
    from fineserve.bench import memory

    bench_args = argparse.Namespace(
        scenario="h100-mixed",
        json=False,
        data_dir=args.data_dir,
        synthetic=False,
        rankings=2,
        duration=300.0,
        quick=True,
        seed=0,
    )
    return memory.run(bench_args)
