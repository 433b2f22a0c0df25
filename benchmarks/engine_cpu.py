"""Decode throughput of FineServe's CPU engine against transformers' `generate`.

Builds a `small` Llama (same shape as `fineserve make-model --size small`: hidden 384, 6 layers,
6 heads / 2 KV heads, head_dim 64, vocab 2048) with random weights, then for each batch size
greedy-decodes the same prompts with both engines on the same weights in this process and
reports generated tokens per second and the ratio ours / transformers.

    python benchmarks/engine_cpu.py [--json] [--batches 1 8 32] [--new-tokens 64] [--threads 1]
                                    [--repeats 3] [--backends cpu torch]

Each repeat runs every FineServe attention backend and then transformers back to back, so
load from other processes hits all of them alike; the headline `ratio` is the first backend's
best-of-repeats tokens/s over transformers' (`*_ratio_median`: medians instead).

Both engines run with the same torch thread count (default 1: on a shared 2-core machine,
OpenMP's second thread stalls whenever another process holds a core, which makes timings of
both engines swing by 10x; `--threads 0` keeps torch's default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from fineserve import LLM, SamplingParams
from fineserve.execution.testing import make_tiny

SMALL = {
    "vocab_size": 2048,
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_hidden_layers": 6,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
}


def _prompts(batch: int, length: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, SMALL["vocab_size"], (batch, length), generator=gen).tolist()


def bench_hf(model: Any, prompts: list[list[int]], new: int) -> float:
    ids = torch.tensor(prompts)
    with torch.inference_mode():
        start = time.perf_counter()
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )
        return time.perf_counter() - start


def bench_ours(llm: LLM, prompts: list[list[int]], new: int) -> tuple[float, list[list[int]]]:
    params = SamplingParams(temperature=0, max_tokens=new, ignore_eos=True)
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    return time.perf_counter() - start, [o.token_ids for o in outs]


def run(
    batches: list[int], new: int, prompt_len: int, repeats: int, backends: list[str]
) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="fineserve-bench-")) / "small-llama"
    make_tiny("llama", folder, seed=0, **SMALL)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    llms = {
        b: LLM({"small": folder}, arena_bytes=256 << 20, max_seqs=max(batches), attention_backend=b)
        for b in backends
    }
    for llm in llms.values():  # warm-up
        bench_ours(llm, _prompts(2, prompt_len, 99), 4)
    bench_hf(hf, _prompts(2, prompt_len, 99), 4)
    rows = []
    for batch in batches:
        prompts = _prompts(batch, prompt_len, batch)
        times: dict[str, list[float]] = {b: [] for b in [*backends, "transformers"]}
        for _ in range(repeats):  # alternate, so load from other processes hits all alike
            for name, llm in llms.items():
                times[name].append(bench_ours(llm, prompts, new)[0])
            times["transformers"].append(bench_hf(hf, prompts, new))
        tokens = batch * new
        best = {k: min(v) for k, v in times.items()}
        med = {k: statistics.median(v) for k, v in times.items()}
        row: dict[str, Any] = {"batch": batch, "new_tokens": new, "prompt_len": prompt_len}
        for i, name in enumerate(backends):
            prefix = "fineserve" if i == 0 else f"fineserve_{name}"
            row[f"{prefix}_tok_s"] = round(tokens / best[name], 1)
            row[f"{prefix}_ratio" if i else "ratio"] = round(best["transformers"] / best[name], 2)
            row[f"{prefix}_ratio_median"] = round(med["transformers"] / med[name], 2)
        row["transformers_tok_s"] = round(tokens / best["transformers"], 1)
        rows.append(row)
    return {
        "model": "llama small (384 hidden, 6 layers, GQA 6/2, fp32)",
        "attention_backends": backends,
        "repeats": repeats,
        "statistic": "tok/s and ratio: best of repeats; ratio_median: median of repeats",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "results": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["cpu", "torch"],
        help="attention backends to run (the first is the headline 'ratio')",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for both engines (0: torch default)"
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    report = run(args.batches, args.new_tokens, args.prompt_len, args.repeats, args.backends)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for row in report["results"]:
        print(
            f"batch {row['batch']:>3}: fineserve {row['fineserve_tok_s']:>8.1f} tok/s  "
            f"transformers {row['transformers_tok_s']:>8.1f} tok/s  ratio {row['ratio']:.2f}x "
            f"(median {row['fineserve_ratio_median']:.2f}x)"
        )


if __name__ == "__main__":
    main()
