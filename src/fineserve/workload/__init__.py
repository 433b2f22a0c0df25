"""Workloads: data folder lookup, trace readers, synthetic traces, arrivals, metrics (no torch).

Nothing here reads the wall clock: every time is seconds on a workload-relative axis.
"""

from fineserve.workload.arrivals import (
    attach_lengths,
    gamma_arrivals,
    interarrival_cv,
    poisson_arrivals,
    power_law_shares,
    scale_trace,
    split_by_shares,
    split_by_slices,
)
from fineserve.workload.data import resolve_data_dir
from fineserve.workload.metrics import RequestRecord, measurement_window, summarize
from fineserve.workload.synthetic import synthetic_azure, synthetic_sharegpt_lengths
from fineserve.workload.traces import (
    TraceRequest,
    load_azure,
    load_mooncake,
    load_sharegpt_lengths,
)

__all__ = [
    "RequestRecord",
    "TraceRequest",
    "attach_lengths",
    "gamma_arrivals",
    "interarrival_cv",
    "load_azure",
    "load_mooncake",
    "load_sharegpt_lengths",
    "measurement_window",
    "poisson_arrivals",
    "power_law_shares",
    "resolve_data_dir",
    "scale_trace",
    "split_by_shares",
    "split_by_slices",
    "summarize",
    "synthetic_azure",
    "synthetic_sharegpt_lengths",
]
