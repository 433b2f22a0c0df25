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


def test_scheduler_never_reads_the_wall_clock() -> None:
    root = Path(fineserve.scheduler.__file__).parent / "local"
    for path in root.rglob("*.py"):
        text = path.read_text()
        for banned in ("import time", "from time", "datetime", "perf_counter", "monotonic"):
            assert banned not in text, f"{path.name} uses {banned}"
