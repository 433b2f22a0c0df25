"""Server overhead: the HTTP/SSE layer, async front, scheduler and KV Slab with instant tokens.

Starts `fineserve serve --backend sim` (the simulated executor: every step is free) in a child
process on a free 127.0.0.1 port, then drives it with the load client in closed loop:

- stream: `--concurrency` streams at a time, each `--stream-tokens` tokens -> streamed tokens/s;
- requests: `--concurrency` at a time, each one token -> requests/s.

    python benchmarks/server_overhead.py [--json] [--requests 400] [--concurrency 64]

What it measures is the ceiling the serving stack imposes on this machine (client included,
in its own process), not model speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from typing import Any

from fineserve.server.launch import spawn_serve
from fineserve.workload.client import ClientConfig, PlannedRequest, run_plan
from fineserve.workload.metrics import measurement_window, summarize


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    return spawn_serve(["--backend", "sim", "--model", "sim=.", "--log-level", "warning"])


def phase(url: str, n: int, concurrency: int, tokens: int) -> dict[str, Any]:
    plan = [PlannedRequest(0.0, "sim", 16, tokens) for _ in range(n)]
    cfg = ClientConfig(url, max_concurrency=concurrency, timeout_s=120)
    records, wall = asyncio.run(run_plan(plan, cfg))
    s = summarize(records, measurement_window(records))
    return {
        "requests": n,
        "concurrency": concurrency,
        "tokens_per_request": tokens,
        "failed": s["failed"],
        "wall_s": round(wall, 3),
        "requests_per_s": round(s["completed"] / wall, 1),
        "streamed_tokens_per_s": round(s["output_tokens"] / wall, 1),
        "ttft_p50_ms": round(1000 * (s["ttft_s"]["p50"] or 0), 2),
        "itl_p50_ms": round(1000 * (s["itl_s"]["p50"] or 0), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--stream-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    proc, url = start_server()
    try:
        phase(url, 20, 4, 4)  # warm-up
        stream = phase(url, max(1, args.requests // 4), args.concurrency, args.stream_tokens)
        short = phase(url, args.requests, args.concurrency, 1)
    finally:
        proc.terminate()
        proc.wait(30)
    result = {"backend": "sim (instant tokens)", "cpus": os.cpu_count(),
              "stream": stream, "requests": short}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        shape = f"{stream['concurrency']} streams x {stream['tokens_per_request']} tokens"
        print(f"streamed tokens/s: {stream['streamed_tokens_per_s']} ({shape})")
        print(f"requests/s: {short['requests_per_s']} (1-token, {short['concurrency']} at a time)")
    return 0 if stream["failed"] == short["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
