"""FineServe: serve many LLMs of mixed precision on shared GPUs.

Heavy modules (torch, the server) load lazily, so `import fineserve` stays cheap for the
pure-Python layers (memory, cost model, scheduler, simulator).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LLM": "fineserve.execution.llm",
    "SamplingParams": "fineserve.execution.sampling",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'fineserve' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)
