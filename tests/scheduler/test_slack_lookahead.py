"""`SlackPolicy(lookahead=True)`: the Moore-Hodgson walk also holds the requests each model is
expected to send within one SLO (`PolicyContext.forecast`), so a long prompt is given up when
the arrivals about to come would not fit beside it, and admitted when they would."""

from __future__ import annotations

from collections.abc import Sequence as Seqs
from types import ModuleType

import pytest

from fineserve.costmodel.base import InstanceKey
from fineserve.scheduler.local import SchedulerConfig, ServedModel
from fineserve.scheduler.local.forecast import ArrivalWindow, Forecast
from fineserve.scheduler.local.policies import Admission, PolicyContext, SlackPolicy
from fineserve.scheduler.local.predict import Predictor
from fineserve.scheduler.local.sequence import Sequence
from fineserve.sim.executor import LinearCostModel

# a full 256-token chunk alone: 5 ms + 0.1 ms x 256 = 30.6 ms; a request costs its share of one
COST = LinearCostModel(fixed_s=0.005, per_token_s=0.0001, per_context_s=0.0)
SERVED = ServedModel("a", InstanceKey("a", "fp16"), 4096, ttft_slo_s=0.1)


def _admitted(forecast: Forecast | None, lookahead: bool = True) -> bool:
    """Whether a 500-token prompt (about 60 ms of a 100 ms SLO) alone in the queue is kept."""
    long = Sequence("long", "a", [1] * 500, 1, arrival_s=0.0, ttft_slo_s=0.1)
    ctx = PolicyContext(0.0, 256, Predictor(COST, {"a": SERVED}, 256), {"a": SERVED})
    if forecast is not None:
        ctx.forecast = {"a": forecast}
    admission = SlackPolicy(fewest_misses=True, lookahead=lookahead).admit([long], ctx)
    assert [s.request_id for s in admission.order + admission.rejected] == ["long"]
    return bool(admission.order)


def test_expected_arrivals_that_would_not_fit_crowd_out_a_long_prompt() -> None:
    # 200 req/s of 64-token prompts: 20 within the SLO, 7.65 ms each; with the long one's
    # 60 ms that is 213 ms of work by the last one's deadline at 200 ms: the long one goes
    assert not _admitted(Forecast(rate=200.0, mean_prompt=64.0))
    assert _admitted(Forecast(rate=200.0, mean_prompt=64.0), lookahead=False)


def test_expected_arrivals_that_fit_leave_the_queue_alone() -> None:
    assert _admitted(Forecast(rate=50.0, mean_prompt=64.0))  # 5 x 7.65 ms + 60 ms fits
    assert _admitted(Forecast(rate=0.0, mean_prompt=64.0))
    assert _admitted(None)


def test_a_request_is_not_given_up_for_expected_arrivals_that_cost_the_same() -> None:
    # expected arrivals of the long prompt's own length would not fit beside it either, but
    # the request that is here is kept and the expected ones are given up
    assert _admitted(Forecast(rate=200.0, mean_prompt=500.0))


def test_lookahead_needs_the_fewest_misses_walk() -> None:
    with pytest.raises(ValueError, match="fewest_misses"):
        SlackPolicy(lookahead=True)


def test_arrival_window_rate_decays_and_forgets_the_oldest() -> None:
    window = ArrivalWindow(size=4, min_count=2)
    window.note(0.0, 100)
    assert window.rate(1.0) == 0.0  # one submission: no rate yet
    window.note(0.5, 300)
    assert window.rate(1.0) == pytest.approx(2.0)  # 2 in the last second
    assert window.rate(4.0) == pytest.approx(0.5)  # silence since: the rate decays
    for t in (1.0, 1.5, 2.0):
        window.note(t, 500)
    assert window.rate(2.0) == pytest.approx(4 / 1.5)  # the first one is forgotten
    assert window.mean_prompt() == pytest.approx((300 + 3 * 500) / 4)


class _Recording(SlackPolicy):
    def __init__(self) -> None:
        super().__init__(fewest_misses=True, lookahead=True)
        self.seen: list[dict[str, Forecast]] = []

    def admit(self, waiting: Seqs[Sequence], ctx: PolicyContext) -> Admission:
        self.seen.append(dict(ctx.forecast))
        return super().admit(waiting, ctx)


def test_the_scheduler_forecasts_each_lane_model_from_its_submissions(h: ModuleType) -> None:
    specs = [h.spec("a", ttft=1.0), h.spec("b", ttft=1.0)]
    engine = h.make_engine(specs, policy="slack", config=SchedulerConfig(token_budget=256))
    policy = engine.scheduler.policy = _Recording()
    for i in range(8):
        engine.add_request(f"a{i}", "a", [1] * (10 + 10 * i), max_tokens=1, arrival_s=0.01 * i)
    engine.begin_step(0.08, frozenset({"a"}))
    assert policy.seen == [{"a": Forecast(rate=8 / 0.08, mean_prompt=45.0)}]
