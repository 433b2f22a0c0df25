"""Latency prediction for one engine iteration: measured tables and an analytic roofline.

No torch and no wall clock here; every model is a pure function of fitted coefficients.
"""

from fineserve.costmodel.base import (
    BatchShape,
    CostModel,
    InstanceKey,
    InterferenceModel,
    colocated_slowdown,
    decode_time,
    normalize_qformat,
    prefill_time,
)
from fineserve.costmodel.registry import FallbackCostModel, make_cost_model
from fineserve.costmodel.roofline import ModelSpec, RooflineCostModel
from fineserve.costmodel.table import TableCostModel

__all__ = [
    "BatchShape",
    "CostModel",
    "FallbackCostModel",
    "InstanceKey",
    "InterferenceModel",
    "ModelSpec",
    "RooflineCostModel",
    "TableCostModel",
    "colocated_slowdown",
    "decode_time",
    "make_cost_model",
    "normalize_qformat",
    "prefill_time",
]
