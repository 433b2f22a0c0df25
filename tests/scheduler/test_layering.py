"""Layer rules: the scheduler, the step contract and the simulated executor import no torch,
and nothing under scheduler/ reads the wall clock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fineserve.scheduler

LIGHT = (
    "fineserve.scheduler.local",
    "fineserve.engine",
    "fineserve.engine.engine",
    "fineserve.engine.async_engine",
    "fineserve.engine.factory",
    "fineserve.engine.overhead",
    "fineserve.sim.executor",
)


def test_light_modules_do_not_import_torch() -> None:
    code = f"import sys\nfor m in {LIGHT!r}: __import__(m)\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


TORCH_FREE_PACKAGES = ("memory", "costmodel", "scheduler", "workload", "sim")


def test_torch_free_packages_import_no_torch() -> None:
    """Every module of the design's torch-free layers imports without loading torch."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"for pkg in {TORCH_FREE_PACKAGES!r}:\n"
        "    base = importlib.import_module('fineserve.' + pkg)\n"
        "    for m in pkgutil.walk_packages(base.__path__, base.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_torch_free_packages_hold_no_deferred_torch_import() -> None:
    """Not even inside a function: code that drives torch lives in execution/, engine's torch
    executor, or bench/ (`sim/cli.py` reaches `bench.validate` for `--validate` only)."""
    root = Path(fineserve.scheduler.__file__).parent.parent
    for pkg in TORCH_FREE_PACKAGES:
        for path in (root / pkg).rglob("*.py"):
            text = path.read_text()
            for banned in ("import torch", "torch_executor", "fineserve.execution"):
                assert banned not in text, f"{path.relative_to(root)} has {banned!r}"


def test_scheduler_never_reads_the_wall_clock() -> None:
    root = Path(fineserve.scheduler.__file__).parent / "local"
    for path in root.rglob("*.py"):
        text = path.read_text()
        for banned in ("import time", "from time", "datetime", "perf_counter", "monotonic"):
            assert banned not in text, f"{path.name} uses {banned}"
