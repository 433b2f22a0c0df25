"""Global placement: which models (TP degree, replicas) run on which GPUs. No torch, no clock.

API for callers (the simulator, the server, ``fineserve plan``)::

    from fineserve.scheduler.placement import (
        ModelDemand, ClusterSpec, PlacementProblem, PlacementOptions, place, POLICIES,
        predict, replan, InfeasibleError,
    )
    problem = PlacementProblem(models=(ModelDemand(...), ...),
                               cluster=ClusterSpec(nodes=2, gpus_per_node=8),
                               cost_model=make_cost_model("h100"))
    placement = place(problem, "fineserve")    # "prism" | "muxserve" | "one_per_gpu" | "milp"
    placement.instances       # InstancePlacement(model, tp, replica, gpus, rate, min/max_batch)
    placement.gpus            # gpu id -> GpuUsage(memory_bytes, used_bytes, kv_need_bytes, util)
    placement.predicted       # Prediction(slo_attainment, goodput, per_model)
    placement.unplaced        # models that did not fit beside the others
    placement.to_json()       # the ``fineserve plan --json`` shape
    predict(problem, instances) -> (Prediction, {gpu: GpuUsage})   # score any placement
    replan(problem, placement, measured_rates) -> ReplanProposal(before, after, moves)

- ``ModelDemand``: name, cost-model ``arch`` and ``qformat``, ``weight_bytes``, ``kv_formats``
  (per TP degree, one rank's page), ``rate`` (req/s), ``ttft_slo_s``/``tpot_slo_s``, mean
  ``prompt_len``/``output_len``, allowed ``tp_options``; ``config.problem_from_config`` builds
  them from the ``fineserve plan`` YAML (``kv_formats_for``/``weight_bytes_for`` from a spec).
- GPU ids are ``n{node}g{index}``; a TP group is an aligned run of GPUs in one node.
- ``place`` raises ``InfeasibleError`` (a ValueError with a readable reason) when a model
  cannot be served even alone; every policy is deterministic for a given problem.
- The prediction is a queueing approximation over the cost model (see ``predict``'s module
  docstring); the same function scores every policy, so comparisons are like for like.
- The placement file (``fileformat``) is what ``fineserve serve --placement FILE`` reads.
"""

from fineserve.scheduler.placement.predict import evaluate, predict
from fineserve.scheduler.placement.problem import (
    ClusterSpec,
    InfeasibleError,
    ModelDemand,
    PlacementOptions,
    PlacementProblem,
    kv_formats_for,
    weight_bytes_for,
)
from fineserve.scheduler.placement.registry import POLICIES, place
from fineserve.scheduler.placement.replan import Move, ReplanProposal, replan
from fineserve.scheduler.placement.sizing import Option, Sizer
from fineserve.scheduler.placement.types import (
    GpuUsage,
    InstancePlacement,
    Placement,
    Prediction,
)

__all__ = [
    "POLICIES",
    "ClusterSpec",
    "GpuUsage",
    "InfeasibleError",
    "InstancePlacement",
    "ModelDemand",
    "Move",
    "Option",
    "Placement",
    "PlacementOptions",
    "PlacementProblem",
    "Prediction",
    "ReplanProposal",
    "Sizer",
    "evaluate",
    "kv_formats_for",
    "place",
    "predict",
    "replan",
    "weight_bytes_for",
]
