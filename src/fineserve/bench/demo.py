"""`fineserve demo` (what `make demo` runs): four tiny models of four precisions served over HTTP.

Steps: make tiny random-weight models (FP16 Llama, AWQ Qwen2, FP8 Mistral, QoQ Llama) into a cache
folder (reused on later runs); load them into one KV Slab arena with the torch executor on the
CPU; serve them with the OpenAI-compatible server on a free 127.0.0.1 port; send a short
Poisson workload with power-law popularity through the HTTP API with the load client; print a
per-model table (requests, SLO attainment, TTFT/TPOT p50/p99, tokens/s) and the KV Slab
occupancy seen during the run; write a PNG plot; shut the server down (draining).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

MODELS = (("llama-fp16", "llama", "fp16"), ("qwen-awq", "qwen2", "awq"),
          ("mistral-fp8", "mistral", "fp8"), ("llama-qoq", "llama", "qoq"))  # fmt: skip


def default_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "fineserve" / "demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, default=None, help="model cache folder")
    parser.add_argument("--duration", type=float, default=20.0, help="workload seconds")
    parser.add_argument("--rate", type=float, default=3.0, help="requests/s over all models")
    parser.add_argument("--slo-ttft", type=float, default=0.5, help="TTFT SLO, seconds")
    parser.add_argument("--slo-tpot", type=float, default=0.1, help="TPOT SLO, seconds")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default: in the cache)")
    parser.add_argument("--json", action="store_true", help="print the JSON summary instead")


def make_models(cache: Path) -> dict[str, Path]:
    """The four tiny model folders (made once; a folder with config.json is reused)."""
    from fineserve.execution import make_model

    return {
        name: make_model.ensure_model(cache / "models" / name, arch, "tiny", precision)
        for name, arch, precision in MODELS
    }


def _kv_sampler(backend: Any) -> tuple[Any, dict[str, Any]]:
    """A coroutine sampling KV Slab occupancy every 50 ms, and the peaks it records."""
    import asyncio

    peaks: dict[str, Any] = {"slabs": {}, "pages": {}, "used_fraction": 0.0, "stranded": 0}

    async def sample(stop: asyncio.Event) -> None:
        while not stop.is_set():
            kv = backend.stats().kv
            for m, n in kv.slabs.items():
                peaks["slabs"][m] = max(peaks["slabs"].get(m, 0), n)
            for m, n in kv.used_pages.items():
                peaks["pages"][m] = max(peaks["pages"].get(m, 0), n)
            peaks["used_fraction"] = max(peaks["used_fraction"], kv.usage_fraction)
            peaks["stranded"] = max(peaks["stranded"], kv.stranded_bytes)
            await asyncio.sleep(0.05)

    return sample, peaks


async def drive(url: str, args: argparse.Namespace, backend: Any) -> tuple[list[Any], Any]:
    """Send the demo workload; returns the records and the KV peaks."""
    import asyncio

    from fineserve.workload.client import ClientConfig, run_plan
    from fineserve.workload.client_workload import WorkloadSpec, build_plan

    spec = WorkloadSpec(kind="poisson", rate=args.rate, duration=args.duration, alpha=1.0,
                        lengths="synthetic", max_prompt=96, max_output=32, length_scale=0.25,
                        slo_ttft=args.slo_ttft, slo_tpot=args.slo_tpot, seed=0)  # fmt: skip
    plan = build_plan(spec, [m[0] for m in MODELS])
    sample, peaks = _kv_sampler(backend)
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(stop))
    try:
        records, _ = await run_plan(plan, ClientConfig(url, timeout_s=120.0))
    finally:
        stop.set()
        await sampler
    return records, peaks


def kv_table(backend: Any, peaks: dict[str, Any]) -> Any:
    from rich.table import Table

    kv = backend.stats().kv
    table = Table(title=f"KV Slab: arena {kv.arena_bytes >> 20} MiB, slab {kv.slab_bytes} B")
    for col in ("model", "KV format", "page bytes", "peak slabs", "peak pages", "pages now"):
        table.add_column(col, justify="left" if col in ("model", "KV format") else "right")
    engine = backend.front.engine
    alloc = engine.scheduler.pages.allocator
    for name in kv.slabs:
        fmt = alloc.page_format(name)
        table.add_row(name, str(fmt.dtype.value),
                      str(fmt.page_bytes), str(peaks["slabs"].get(name, 0)),
                      str(peaks["pages"].get(name, 0)), str(kv.used_pages[name]))  # fmt: skip
    table.caption = (
        f"peak arena use {100 * peaks['used_fraction']:.2f}%, peak stranded "
        f"{peaks['stranded']} B, free slabs now {kv.free_slabs}"
    )
    return table


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import time

    from rich.console import Console

    from fineserve.server.app import create_app
    from fineserve.server.config import ModelConfig, ServeConfig
    from fineserve.server.launch import LiveServer
    from fineserve.server.torch_backend import load_torch_backend
    from fineserve.workload.client_report import errors_by_kind, summary_table, write_plot
    from fineserve.workload.metrics import measurement_window, summarize

    console = Console(stderr=args.json, width=max(120, Console().width), highlight=False)
    t0 = time.monotonic()
    cache = args.cache_dir or default_cache()
    folders = make_models(cache)
    console.print(f"demo: models ready in {cache / 'models'} ({time.monotonic() - t0:.1f} s)")
    slo = (args.slo_ttft, args.slo_tpot)
    models = tuple(ModelConfig(n, p, *slo) for n, p in folders.items())
    backend = load_torch_backend(ServeConfig(models=models, arena_bytes=2 << 20))
    with LiveServer(create_app(backend)) as server:
        console.print(f"demo: serving {len(models)} models at {server.url}/v1; sending load")
        records, peaks = asyncio.run(drive(server.url, args, backend))
        kv = kv_table(backend, peaks)
    summary = summarize(records, measurement_window(records))
    plot = write_plot(records, summary, args.plot or cache / "demo.png", "fineserve demo (CPU)")
    if args.json:
        print(json.dumps({"summary": summary, "kv_peaks": peaks, "plot": str(plot)}, indent=2))
    else:
        console.print(summary_table(summary, "fineserve demo: 4 tiny models, one KV Slab arena"))
        console.print(kv)
        for message, count in errors_by_kind(records).items():
            console.print(f"demo: {count} request(s) failed: {message}", markup=False)
        console.print(f"demo: plot: {plot}; total {time.monotonic() - t0:.1f} s")
    return 0 if summary["completed"] == summary["requests"] else 1
