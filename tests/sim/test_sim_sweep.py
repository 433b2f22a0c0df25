"""The `paper` sweep's cells run on worker processes give the same document as one process."""

from __future__ import annotations

import pytest

from fineserve.cli import main
from fineserve.sim.experiments import (
    PaperConfig,
    PaperRun,
    longest_first,
    run_paper,
    sweep_runs,
)

TINY = PaperConfig(
    rates=(6.0, 12.0),
    slo_scales=(5.0,),
    duration_s=4.0,
    drain_s=5.0,
    schemes=("static", "prism", "fineserve_plus"),
)
WALL_FIELDS = {"wall_s", "planning_wall_s"}


def _without_walls(runs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in r.items() if k not in WALL_FIELDS} for r in runs]


def test_sweep_runs_are_every_cell_in_document_order() -> None:
    runs = sweep_runs(TINY)
    assert len(runs) == 2 * 1 * 3
    assert runs[0] == PaperRun(6.0, 5.0, "static")
    assert runs[-1] == PaperRun(12.0, 5.0, "fineserve_plus")


def test_longest_first_starts_the_highest_rate_and_planning_schemes() -> None:
    order = longest_first(sweep_runs(TINY))
    assert [r.rate for r in order] == [12.0] * 3 + [6.0] * 3
    assert order[0].scheme == "fineserve_plus"
    assert order[3].scheme == "fineserve_plus"
    assert sorted(order, key=repr) == sorted(sweep_runs(TINY), key=repr)


def test_worker_processes_give_the_single_process_document() -> None:
    one = run_paper(TINY, None, jobs=1)
    two = run_paper(TINY, None, jobs=2)
    assert two["points"] == one["points"]
    assert _without_walls(two["runs"]) == _without_walls(one["runs"])
    assert [p["rate"] for p in one["points"]] == [6.0, 12.0]
    assert set(one["points"][0]["schemes"]) == {"static", "prism", "fineserve_plus"}
    assert (one["jobs"], two["jobs"]) == (1, 2)
    assert one["sim_speedup"] > 0 and one["sim_speedup_per_process"] > 0


def test_jobs_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="jobs"):
        run_paper(TINY, None, jobs=0)


def test_cli_jobs_below_one_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--experiment", "paper", "--quick", "--jobs", "0"]) == 2
    assert "--jobs" in capsys.readouterr().err
