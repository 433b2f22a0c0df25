"""Reporting a load run: a per-model table (rich), a PNG plot (matplotlib), JSON-ready results.

All three read the dict of `workload.metrics.summarize`, so the live client and the simulator
report the same numbers the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fineserve.workload.metrics import RequestRecord


def _ms(stats: dict[str, Any], key: str) -> str:
    value = stats.get(key)
    return "-" if value is None else f"{value * 1000:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def summary_table(summary: dict[str, Any], title: str = "Load run") -> Any:
    """A rich Table: one row per model and one for all requests."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("model", "requests", "done", "SLO att.", "TTFT p50", "TTFT p99", "TPOT p50",
                "TPOT p99", "out tok/s", "goodput"):  # fmt: skip
        table.add_column(col, justify="left" if col == "model" else "right")
    rows = [*summary["models"].items(), ("all", summary)]
    for name, s in rows:
        table.add_row(
            name,
            str(s["requests"]),
            str(s["completed"]),
            _pct(s["slo_attainment"]),
            _ms(s["ttft_s"], "p50") + " ms",
            _ms(s["ttft_s"], "p99") + " ms",
            _ms(s["tpot_s"], "p50") + " ms",
            _ms(s["tpot_s"], "p99") + " ms",
            f"{s['tokens_per_s']:.1f}",
            f"{s['goodput_rps']:.2f}/s",
        )
    return table


def _cdf(ax: Any, values: Sequence[float], label: str) -> None:
    xs = sorted(values)
    if xs:
        ax.step([x * 1000 for x in xs], [(i + 1) / len(xs) for i in range(len(xs))], label=label,
                where="post")  # fmt: skip


def write_plot(
    records: Sequence[RequestRecord], summary: dict[str, Any], path: Path, title: str = ""
) -> Path:
    """TTFT and TPOT CDFs per model and SLO attainment per model, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    models = sorted(summary["models"])
    for m in models:
        mine = [r for r in records if r.model == m]
        _cdf(axes[0], [r.ttft_s for r in mine if r.ttft_s is not None], m)
        _cdf(axes[1], [r.tpot_s for r in mine if r.tpot_s is not None], m)
    for ax, name in zip(axes[:2], ("TTFT", "TPOT"), strict=True):
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        if models:
            ax.legend(fontsize=8)
    att = [summary["models"][m]["slo_attainment"] or 0.0 for m in models]
    axes[2].bar([*models, "all"], [100 * a for a in att] + [100 * (summary["slo_attainment"] or 0)])
    axes[2].set_ylim(0, 105)
    axes[2].set_ylabel("SLO attainment (%)")
    fig.suptitle(title or "FineServe load run")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def errors_by_kind(records: Sequence[RequestRecord], limit: int = 5) -> dict[str, int]:
    """The most common error messages (first 80 characters) and their counts."""
    counts: dict[str, int] = {}
    for r in records:
        if r.error is not None:
            key = r.error[:80]
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:limit])
