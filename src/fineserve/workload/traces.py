"""Readers for real request traces: Azure LLM inference 2023, ShareGPT lengths, Mooncake.

Every loader returns requests sorted by arrival with ``arrival_s`` measured from the first
request of the file (so the first arrival is 0.0). Token counts are clamped to at least 1
(a zero-length prompt or output cannot be served). No wall clock is read: timestamps are parsed.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fineserve.workload.data import find_data_file

AZURE_DIR = "azure-llm-inference-2023"
SHAREGPT_DIR = "sharegpt-lengths-sarathi"
SHAREGPT_FILE = "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
MOONCAKE_DIR = "mooncake-fast25-traces"
AZURE_SERVICES = ("conv", "code")


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: arrival (seconds from trace start) and token counts (>= 1)."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int


def parse_azure_timestamp(text: str) -> float:
    """``YYYY-MM-DD HH:MM:SS[.fffffff]`` -> POSIX-like seconds (naive, any fraction length)."""
    text = text.strip()
    whole, _, frac = text.partition(".")
    base = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S")
    seconds = (base - datetime(1970, 1, 1)).total_seconds()
    return seconds + (float("0." + frac) if frac else 0.0)


def _rebase(reqs: list[TraceRequest]) -> list[TraceRequest]:
    """Sort by arrival and shift so the first arrival is at 0.0."""
    reqs = sorted(reqs, key=lambda r: r.arrival_s)
    if not reqs:
        return reqs
    t0 = reqs[0].arrival_s
    return [TraceRequest(r.arrival_s - t0, r.prompt_tokens, r.output_tokens) for r in reqs]


def azure_path(data_dir: Path, service: str = "conv") -> Path:
    """Path of the Azure 2023 CSV for ``service`` ("conv" or "code")."""
    if service not in AZURE_SERVICES:
        raise ValueError(f"unknown Azure service {service!r}; expected one of {AZURE_SERVICES}")
    return find_data_file(data_dir, AZURE_DIR, f"AzureLLMInferenceTrace_{service}.csv")


def load_azure(data_dir: Path, service: str = "conv") -> list[TraceRequest]:
    """Azure LLM inference trace 2023 (columns TIMESTAMP, ContextTokens, GeneratedTokens)."""
    out: list[TraceRequest] = []
    with azure_path(data_dir, service).open(newline="") as fh:
        for row in csv.DictReader(fh):
            out.append(
                TraceRequest(
                    parse_azure_timestamp(row["TIMESTAMP"]),
                    max(1, int(row["ContextTokens"])),
                    max(1, int(row["GeneratedTokens"])),
                )
            )
    return _rebase(out)


def load_sharegpt_lengths(data_dir: Path) -> list[tuple[int, int]]:
    """(prompt, output) token counts from sarathi-serve's ShareGPT statistics, in file order."""
    path = find_data_file(data_dir, SHAREGPT_DIR, SHAREGPT_FILE)
    out: list[tuple[int, int]] = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            out.append(
                (max(1, int(row["num_prefill_tokens"])), max(1, int(row["num_decode_tokens"])))
            )
    return out


def load_mooncake(data_dir: Path, name: str = "conversation") -> list[TraceRequest]:
    """Mooncake FAST'25 JSONL trace ``<name>_trace.jsonl``; ``timestamp`` is in milliseconds.

    Fields used: ``timestamp``, ``input_length``, ``output_length`` (``hash_ids``, the 512-token
    prefix-block hashes, are read by :func:`load_mooncake_prefix_blocks`).
    """
    path = find_data_file(data_dir, MOONCAKE_DIR, f"{name}_trace.jsonl")
    out: list[TraceRequest] = []
    with path.open() as fh:
        for line in fh:
            if not line.strip():
                continue
            obj = json.loads(line)
            out.append(
                TraceRequest(
                    float(obj["timestamp"]) / 1000.0,
                    max(1, int(obj["input_length"])),
                    max(1, int(obj["output_length"])),
                )
            )
    return _rebase(out)


def load_mooncake_prefix_blocks(
    data_dir: Path, name: str = "conversation"
) -> list[tuple[int, ...]]:
    """Per request (file order, which is arrival order), its prefix-block hash ids."""
    path = find_data_file(data_dir, MOONCAKE_DIR, f"{name}_trace.jsonl")
    with path.open() as fh:
        return [
            tuple(int(h) for h in json.loads(ln).get("hash_ids", ())) for ln in fh if ln.strip()
        ]
