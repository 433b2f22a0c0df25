"""`fineserve profile --model DIR [--json PATH] [--csv PATH]`: measure the real engine here.

For every (batch size, input length) of a grid, the engine (torch executor, one model in its
own arena, wall clock), after one warm-up request, runs `batch` prompts of `input_len` tokens
as one prefill step, then `output_len - 1` decode steps. Rows follow the schema of the H100 profile
(`costmodel.profile.PROFILE_COLUMNS`): `prefill_time` = `ttft` = the prefill step, `tpot` = mean
decode step, `decode_time` = all decode steps, `e2e` = both. A step is timed whole (planning,
execution and output handling), as a user sees it; the table feeds
`make_cost_model("table:<path>")`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

DEFAULT_BATCHES = "1,2,4,8,16"
DEFAULT_INPUTS = "32,64,128"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder")
    parser.add_argument("--name", help="model name in the table (default: folder name)")
    parser.add_argument("--qformat", default="auto", help="qformat column (default: from config)")
    parser.add_argument("--batch-sizes", default=DEFAULT_BATCHES)
    parser.add_argument("--input-lens", default=DEFAULT_INPUTS)
    parser.add_argument("--output-len", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="runs per point (median kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", dest="json_out", help="write rows as JSON ('-' = stdout)")
    parser.add_argument("--csv", dest="csv_out", help="write rows as a profile CSV")


def qformat_of(folder: Path) -> str:
    """The checkpoint's precision as a cost-model qformat (quant method, else its dtype)."""
    config = json.loads((folder / "config.json").read_text())
    quant = config.get("quantization_config") or {}
    method = str(quant.get("quant_method") or "").lower()
    if method:
        return method
    return str(config.get("dtype") or config.get("torch_dtype") or "fp32").replace("float", "fp")


def measure_point(
    folder: Path, batch: int, input_len: int, output_len: int, name: str
) -> tuple[float, float]:
    """(prefill step seconds, mean decode step seconds) for one grid point."""
    from fineserve.engine.clock import WallClock
    from fineserve.engine.torch_executor import TorchModel, load_torch_engine
    from fineserve.execution.sampling import SamplingParams
    from fineserve.scheduler.local import SchedulerConfig
    from fineserve.sim.executor import LinearCostModel

    tokens = batch * (input_len + output_len)
    engine, _ = load_torch_engine(
        [TorchModel(name, folder)],
        arena_bytes=_arena_bytes(folder, tokens),
        cost_model=LinearCostModel(),
        policy="fcfs",
        config=SchedulerConfig(token_budget=batch * input_len, max_running=batch),
        clock=WallClock(),
    )
    params = SamplingParams(temperature=0.0, ignore_eos=True)
    engine.add_request("warmup", name, [3] * input_len, max_tokens=2, sampling=params)
    engine.run_until_idle()  # first calls pay one-off costs: keep them out of the table
    for i in range(batch):
        prompt = [(17 * i + k) % 200 + 3 for k in range(input_len)]
        engine.add_request(f"p{i}", name, prompt, max_tokens=output_len, sampling=params)
    steps: list[float] = []
    while engine.has_unfinished():
        start = engine.clock.now()
        engine.step()
        steps.append(engine.clock.now() - start)
    return steps[0], statistics.fmean(steps[1:]) if len(steps) > 1 else 0.0


def _arena_bytes(folder: Path, tokens: int) -> int:
    config = json.loads((folder / "config.json").read_text())
    heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    per_token = config["num_hidden_layers"] * 2 * heads * dim * 4
    return max(1 << 20, 2 * per_token * (tokens + 64 * 16))


def profile_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    folder = Path(args.model)
    name = args.name or folder.name
    qformat = qformat_of(folder) if args.qformat == "auto" else args.qformat
    rows = []
    for batch in _ints(args.batch_sizes):
        for input_len in _ints(args.input_lens):
            runs = [
                measure_point(folder, batch, input_len, args.output_len, name)
                for _ in range(args.repeats)
            ]
            prefill = statistics.median(r[0] for r in runs)
            tpot = statistics.median(r[1] for r in runs)
            decode = tpot * (args.output_len - 1)
            rows.append(
                {
                    "model": name,
                    "qformat": qformat,
                    "tp": 1,
                    "mps_percentage": 100,
                    "batch_size": batch,
                    "input_len": input_len,
                    "output_len": args.output_len,
                    "seq_len": input_len + args.output_len,
                    "prefill_time": prefill,
                    "decode_time": decode,
                    "ttft": prefill,
                    "tpot": tpot,
                    "e2e": prefill + decode,
                }
            )
    return rows


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise ValueError(f"expected positive integers, got {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    from fineserve.cli import CliError
    from fineserve.costmodel.profile import write_profile

    if not (Path(args.model) / "config.json").is_file():
        raise CliError(f"{args.model} is not a model folder (no config.json)")
    if args.output_len < 2:
        raise CliError("--output-len must be >= 2 (one prefill token and one decode)")
    import torch

    torch.set_num_threads(args.threads)
    try:
        rows = profile_rows(args)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if args.csv_out:
        write_profile(Path(args.csv_out), rows)
    if args.json_out == "-" or not (args.json_out or args.csv_out):
        json.dump(rows, sys.stdout, indent=1)
        print()
    elif args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0
