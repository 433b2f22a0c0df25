"""The cost-model types the local scheduler uses, re-exported from `fineserve.costmodel.base`."""

from __future__ import annotations

from fineserve.costmodel.base import BatchShape, CostModel, InstanceKey, InterferenceModel

__all__ = ["BatchShape", "CostModel", "InstanceKey", "InterferenceModel"]
