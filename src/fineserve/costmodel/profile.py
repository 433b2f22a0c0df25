"""Reader for profile tables (the H100 CSV and the CPU tables ``fineserve profile`` writes).

Schema (header names): model, qformat, tp, mps_percentage, batch_size, input_len, output_len,
seq_len, prefill_time, decode_time, ttft, tpot, e2e (seconds), and the optional mixed_time.
``prefill_time`` is the prefill of the whole batch (batch_size prompts of input_len tokens);
``tpot`` is the mean decode step time while the batch generates output_len tokens;
``mixed_time`` (CPU tables of ``fineserve profile``; absent from the H100 profile) is the mean
step in which a further prompt of input_len tokens prefills beside batch_size decodes of uneven
contexts (`table.mixed_shape`; tables written before 2026-11-22 timed it beside the row's own
batch, every decode at context input_len + output_len - 1). Missing optional columns default
sensibly (mps_percentage 100, tp 1, mixed_time 0 = not measured); qformats are normalised
(``org`` -> ``fp16``, ``fp8_kv8`` -> ``fp8``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from fineserve.costmodel.base import InstanceKey, normalize_qformat

PROFILE_DIR = "fineserve-profiles"
H100_FILE = "h100-cost.csv"
PROFILE_COLUMNS = (
    "model",
    "qformat",
    "tp",
    "mps_percentage",
    "batch_size",
    "input_len",
    "output_len",
    "seq_len",
    "prefill_time",
    "decode_time",
    "ttft",
    "tpot",
    "e2e",
    "mixed_time",
)


@dataclass(frozen=True)
class ProfileRow:
    """One measured (instance, MPS share, batch, input length) point."""

    key: InstanceKey
    mps_percentage: float
    batch_size: int
    input_len: int
    output_len: int
    prefill_time: float
    ttft: float
    tpot: float
    mixed_time: float = 0.0  # 0.0: not measured

    @property
    def mean_decode_context(self) -> float:
        """Average context of a decode step over the output: input + (output - 1) / 2 + 1."""
        return self.input_len + (self.output_len + 1) / 2.0


def _num(row: dict[str, str], name: str, default: float | None = None) -> float:
    raw = (row.get(name) or "").strip()
    if not raw:
        if default is None:
            raise ValueError(f"profile row lacks {name!r}: {row}")
        return default
    return float(raw)


def read_profile(path: Path) -> list[ProfileRow]:
    """All rows of a profile CSV, in file order; raises ValueError on a malformed row."""
    out: list[ProfileRow] = []
    with Path(path).open(newline="") as fh:
        for row in csv.DictReader(fh):
            key = InstanceKey(
                row["model"].strip(), normalize_qformat(row["qformat"]), int(_num(row, "tp", 1))
            )
            prefill = _num(row, "prefill_time", _num(row, "ttft", 0.0))
            out.append(
                ProfileRow(
                    key=key,
                    mps_percentage=_num(row, "mps_percentage", 100.0),
                    batch_size=int(_num(row, "batch_size")),
                    input_len=int(_num(row, "input_len")),
                    output_len=int(_num(row, "output_len", 1)),
                    prefill_time=prefill,
                    ttft=_num(row, "ttft", prefill),
                    tpot=_num(row, "tpot", 0.0),
                    mixed_time=_num(row, "mixed_time", 0.0),
                )
            )
    return out


def write_profile(path: Path, rows: list[dict[str, float | int | str]]) -> None:
    """Write rows (dicts with the schema columns) as a profile CSV (``fineserve profile``)."""
    with Path(path).open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(PROFILE_COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in PROFILE_COLUMNS})
