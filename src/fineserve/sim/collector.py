"""The cyclic garbage collector's schedule during a simulation run.

A run keeps hundreds of thousands of container objects alive (sequences, their token and page
lists, records) and makes almost no reference cycles (measured at `paper` 480 req/s, SLO x10:
about 560 objects collected in a whole run). With CPython's default thresholds (700, 10, 10)
the run pays for several full collections that each walk every one of those objects for
nothing: 5% of the run's wall time. `rare_collections` raises the thresholds for the run and
restores them after, so the collector still runs (cycles are still freed), but rarely.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: (young generation allocations, young collections per middle, middle per full) during a run
RUN_THRESHOLDS = (200_000, 50, 1_000)


@contextmanager
def rare_collections(thresholds: tuple[int, int, int] = RUN_THRESHOLDS) -> Iterator[None]:
    """Within the block the collector runs with `thresholds`; the previous ones come back on
    exit, also when the block raises."""
    before = gc.get_threshold()
    gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        gc.set_threshold(*before)
