"""`fineserve sim` argument handling and the report helpers (no long runs)."""

from __future__ import annotations

import pytest

from fineserve.cli import main
from fineserve.sim.report import format_paper, headline

DOC = {
    "experiment": "paper",
    "sim_speedup": 30.0,
    "points": [
        {"rate": 10.0, "slo_scale": 5.0, "schemes": {
            "prism": {"slo_attainment": 0.9, "tokens_per_s": 100.0, "goodput_rps": 9.0},
            "fineserve": {"slo_attainment": 0.95, "tokens_per_s": 110.0, "goodput_rps": 9.5}}},
        {"rate": 20.0, "slo_scale": 5.0, "schemes": {
            "prism": {"slo_attainment": 0.4, "tokens_per_s": 150.0, "goodput_rps": 8.0},
            "fineserve": {"slo_attainment": 0.8, "tokens_per_s": 300.0, "goodput_rps": 16.0},
            "fineserve_plus": {"slo_attainment": 0.6, "tokens_per_s": 75.0,
                               "goodput_rps": 12.0}}},
    ],
}  # fmt: skip


def test_needs_exactly_one_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim"]) == 2
    assert "exactly one" in capsys.readouterr().err


def test_bad_rates_are_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--experiment", "paper", "--rates", "fast"]) == 2
    assert "--rates" in capsys.readouterr().err


def test_headline_compares_with_the_best_baseline() -> None:
    h = headline(DOC)
    assert h["rate"] == 20.0
    assert h["attainment_ratio"] == pytest.approx(2.0)
    assert h["tokens_ratio"] == pytest.approx(2.0)
    assert h["plus_attainment_ratio"] == pytest.approx(1.5)
    assert h["plus_tokens_ratio"] == pytest.approx(0.5)
    assert h["plus_attainment_gain"] == pytest.approx(-0.2)
    text = format_paper(DOC)
    assert "FineServe / best baseline = 2.00x attainment" in text
    assert "fineserve_plus / best baseline = 1.50x attainment, 0.50x tokens/s" in text


def test_report_names_the_jobs_and_the_per_process_speed() -> None:
    doc = {**DOC, "sim_speedup": 48.9, "sim_speedup_per_process": 26.0, "jobs": 2}
    assert "(sim_speedup 48.9x on 2 jobs, 26.0x per process)" in format_paper(doc)
    assert "(sim_speedup 30.0x)" in format_paper(DOC)
