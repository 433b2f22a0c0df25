"""KV Slab: one KV arena per device, slabs lent to one page format at a time (no torch here)."""

from fineserve.memory.errors import (
    DoubleFreeError,
    InvalidFormatError,
    KVMemoryError,
    OutOfPagesError,
    UnknownModelError,
)
from fineserve.memory.formats import KVDtype, KVFormat, PageLayout

__all__ = [
    "DoubleFreeError",
    "InvalidFormatError",
    "KVDtype",
    "KVFormat",
    "KVMemoryError",
    "OutOfPagesError",
    "PageLayout",
    "UnknownModelError",
]
