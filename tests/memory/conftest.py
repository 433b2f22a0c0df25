from __future__ import annotations

import pytest

from fineserve.memory import KVDtype, KVFormat
from fineserve.memory.allocator import ModelKV

KIB = 1024


def small_models() -> list[ModelKV]:
    """Four formats with different page sizes and layer counts (sizes in bytes are small so
    tests cover many slabs quickly)."""
    return [
        ModelKV("fp16", KVFormat(4, 2, 16, KVDtype.FP16, 4)),  # 1024 B
        ModelKV("fp8", KVFormat(4, 2, 16, KVDtype.FP8, 4)),  # 512 B
        ModelKV("int4", KVFormat(4, 2, 16, KVDtype.INT4, 4)),  # 4*2*4*2*(8+4) = 768 B
        ModelKV("deep", KVFormat(8, 1, 16, KVDtype.FP16, 4)),  # 1024 B, twice the layers
    ]


@pytest.fixture
def models() -> list[ModelKV]:
    return small_models()
