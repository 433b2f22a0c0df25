"""The engine: local scheduler + KV memory + an executor, stepped by a clock.

Light to import (no torch): the torch executor lives in `engine.torch_executor` and loads only
when asked for.
"""

from fineserve.engine.clock import Clock, VirtualClock, WallClock
from fineserve.engine.step import Executor, ModelBatch, RequestOutput, StepPlan, StepResult

__all__ = [
    "Clock",
    "Executor",
    "ModelBatch",
    "RequestOutput",
    "StepPlan",
    "StepResult",
    "VirtualClock",
    "WallClock",
]
