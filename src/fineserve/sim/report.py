"""Text tables, headline ratios and matplotlib plots for simulator experiment documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BASELINES = ("static", "muxserve", "prism")


def headline(doc: dict[str, Any]) -> dict[str, float]:
    """FineServe vs the best baseline: attainment ratio at the highest rate (tightest SLO scale
    there) and tokens/s ratio at the highest rate (saturation), for `fineserve` (as published)
    and, when present, `fineserve_plus` (`plus_*`); fineserve_plus vs fineserve."""
    points = doc["points"]
    if not points:
        return {}
    top = max(p["rate"] for p in points)
    at_top = sorted((p for p in points if p["rate"] == top), key=lambda p: p["slo_scale"])
    out: dict[str, float] = {"rate": top}
    for p in at_top[:1]:
        s = p["schemes"]
        base = [b for b in BASELINES if b in s]
        if "fineserve" not in s or not base:
            return out
        best_att = max(s[b]["slo_attainment"] for b in base)
        best_tok = max(s[b]["tokens_per_s"] for b in base)
        out["slo_scale"] = p["slo_scale"]
        out["attainment_ratio"] = s["fineserve"]["slo_attainment"] / max(best_att, 1e-9)
        out["tokens_ratio"] = s["fineserve"]["tokens_per_s"] / max(best_tok, 1e-9)
        if "fineserve_plus" in s:
            plus = s["fineserve_plus"]
            out["plus_attainment_ratio"] = plus["slo_attainment"] / max(best_att, 1e-9)
            out["plus_tokens_ratio"] = plus["tokens_per_s"] / max(best_tok, 1e-9)
            out["plus_attainment_gain"] = plus["slo_attainment"] - s["fineserve"]["slo_attainment"]
    return out


def format_paper(doc: dict[str, Any]) -> str:
    """A readable table: one row per point and scheme."""
    speed = f"sim_speedup {doc.get('sim_speedup', 0):.1f}x"
    if "sim_speedup_per_process" in doc:
        speed += f" on {doc.get('jobs', 1)} jobs, {doc['sim_speedup_per_process']:.1f}x per process"
    lines = [f"experiment {doc['experiment']}  ({speed})"]
    lines.append(f"{'rate':>7} {'slo':>5} {'scheme':<15} {'attain':>7} {'tok/s':>9} {'good/s':>7}")
    for p in doc["points"]:
        for name, s in p["schemes"].items():
            lines.append(
                f"{p['rate']:7g} {p['slo_scale']:5g} {name:<15} {s['slo_attainment']:7.3f} "
                f"{s['tokens_per_s']:9.0f} {s['goodput_rps']:7.2f}"
            )
    h = headline(doc)
    if "attainment_ratio" in h:
        lines.append(
            f"at rate {h['rate']:g} (SLO x{h['slo_scale']:g}): FineServe / best baseline = "
            f"{h['attainment_ratio']:.2f}x attainment, {h['tokens_ratio']:.2f}x tokens/s"
        )
    if "plus_attainment_ratio" in h:
        lines.append(
            f"at rate {h['rate']:g} (SLO x{h['slo_scale']:g}): fineserve_plus / best baseline = "
            f"{h['plus_attainment_ratio']:.2f}x attainment, {h['plus_tokens_ratio']:.2f}x tokens/s"
        )
    return "\n".join(lines)


def write_plots(doc: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Attainment and tokens/s against rate, one PNG per SLO scale and metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    points = doc.get("points", [])
    scales = sorted({p["slo_scale"] for p in points})
    for scale in scales:
        pts = sorted((p for p in points if p["slo_scale"] == scale), key=lambda p: p["rate"])
        schemes = list(pts[0]["schemes"]) if pts else []
        for metric, label in (("slo_attainment", "SLO attainment"), ("tokens_per_s", "tokens/s")):
            fig, ax = plt.subplots(figsize=(5, 3.5))
            for name in schemes:
                ax.plot(
                    [p["rate"] for p in pts],
                    [p["schemes"][name][metric] for p in pts],
                    marker="o",
                    label=name,
                )
            ax.set_xlabel("total request rate (req/s)")
            ax.set_ylabel(label)
            ax.set_title(f"{doc['experiment']}: TTFT SLO = {scale:g} x solo")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = out / f"{doc['experiment']}_{metric}_slo{scale:g}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths
