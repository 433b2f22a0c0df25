"""Cost models by name.

- ``"h100-table"``: :class:`TableCostModel` from the committed H100 coefficients;
- ``"roofline"``: :class:`RooflineCostModel` calibrated on the H100 table (kw: ``models``, ``gpu``);
- ``"h100"``: the table where it has a profile, the roofline elsewhere;
- ``"table:<path>"``: a profile CSV (fitted on load, e.g. a ``fineserve profile`` CPU table) or a
  coefficients JSON written by ``python -m fineserve.costmodel.fit``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fineserve.costmodel.base import BatchShape, CostModel, CostModelHelpers, InstanceKey
from fineserve.costmodel.roofline import RooflineCostModel
from fineserve.costmodel.table import DEFAULT_FIT_PATH, TableCostModel

COST_MODEL_NAMES = ("h100-table", "roofline", "h100", "table:<path>")


class FallbackCostModel(CostModelHelpers):
    """Ask ``primary`` when it supports the key, else ``fallback``."""

    def __init__(self, primary: CostModel, fallback: CostModel) -> None:
        self.primary, self.fallback = primary, fallback

    def supports(self, key: InstanceKey) -> bool:
        return self.primary.supports(key) or self.fallback.supports(key)

    def step_time(self, key: InstanceKey, batch: BatchShape) -> float:
        model = self.primary if self.primary.supports(key) else self.fallback
        return model.step_time(key, batch)


def make_cost_model(name: str, **kw: Any) -> CostModel:
    """Build a cost model by name (see module docstring); ValueError for an unknown name."""
    if name == "h100-table":
        return TableCostModel.from_json(DEFAULT_FIT_PATH)
    if name == "roofline":
        return _roofline(**kw)
    if name == "h100":
        return FallbackCostModel(TableCostModel.from_json(DEFAULT_FIT_PATH), _roofline(**kw))
    if name.startswith("table:"):
        path = Path(name.removeprefix("table:"))
        if not path.is_file():
            raise ValueError(f"cost table {str(path)!r} does not exist")
        if path.suffix == ".json":
            return TableCostModel.from_json(path)
        return TableCostModel.from_csv(path)
    raise ValueError(f"unknown cost model {name!r}; expected one of {COST_MODEL_NAMES}")


def _roofline(**kw: Any) -> RooflineCostModel:
    base = RooflineCostModel.from_json(DEFAULT_FIT_PATH, models=kw.get("models"))
    if "gpu" in kw:
        return RooflineCostModel(base.calibrations(), kw.get("models"), kw["gpu"])
    return base
