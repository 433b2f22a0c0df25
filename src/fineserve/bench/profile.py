"""`fineserve profile --model DIR [--json PATH] [--csv PATH]`: measure the real engine here.

For every (batch size, input length) of a grid, the engine (torch executor, one model in its
own arena, wall clock), after one warm-up request, runs `batch` prompts of `input_len` tokens
as one prefill step, then `output_len - 1` decode steps; then `batch` sequences of uneven
contexts run one decode step and one step that prefills one more prompt of `input_len` tokens
beside their decodes (`mixed_steps` such pairs in `measure_point_steps`, one prompt each;
`sim --validate` times 4). Rows follow the
schema of the H100 profile (`costmodel.profile.PROFILE_COLUMNS`): `prefill_time` = `ttft` =
the prefill step, `tpot` = mean decode step, `decode_time` = all decode steps, `e2e` = both,
plus `mixed_time` = the (mean) mixed step (the table's extra cost of mixed batches is fitted
from it). A step is timed whole (planning, execution and output handling), as a user sees
it; the table feeds `make_cost_model("table:<path>")`.

Noise: every point is measured `--repeats` times and the median kept; repeats are interleaved
over the grid (the whole grid once, then again, ...) so a burst of load from other processes
hits one run of many points rather than every run of one point. `--clock cpu` times steps on
`ProcessClock` (this process's CPU seconds) instead of the wall clock: on a CPU shared with
other processes it measures the engine's own work, which is what a table predicting a
dedicated core needs (with one torch thread, CPU time equals wall time on an idle core).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BATCHES = "1,2,4,8,16"
DEFAULT_INPUTS = "32,64,128"
CLOCKS = ("wall", "cpu")


class ProcessClock:
    """Engine time on a shared CPU: this process's CPU seconds plus idle time skipped.

    `now()` = CPU seconds used by the process since the clock was made + every gap jumped by
    `sleep_until` (which does not wait: an idle engine costs no time). Invariant: `now()`
    never decreases. It keeps the `engine.clock.Clock` contract; with one torch thread a step
    reads the same on it as on a `WallClock` on an otherwise idle core, and time slices taken
    by other processes are not counted.
    """

    def __init__(self) -> None:
        self._origin = time.process_time()
        self._skipped = 0.0

    def now(self) -> float:
        return time.process_time() - self._origin + self._skipped

    def advance(self, seconds: float) -> None:
        return None

    def sleep_until(self, t: float) -> None:
        gap = t - self.now()
        if gap > 0:
            self._skipped += gap


def machine_conditions(loadavg_before: tuple[float, float, float]) -> dict[str, Any]:
    """How loaded the machine was around a measurement that began at `loadavg_before`
    (`os.getloadavg()` then): load averages before and now, CPU count, torch threads."""
    import torch

    return {
        "loadavg_before": loadavg_before,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def make_clock(kind: str) -> Any:
    """A fresh `WallClock` (`"wall"`) or `ProcessClock` (`"cpu"`); ValueError otherwise."""
    from fineserve.engine.clock import WallClock

    if kind == "wall":
        return WallClock()
    if kind == "cpu":
        return ProcessClock()
    raise ValueError(f"unknown clock {kind!r}; choose from {CLOCKS}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder")
    parser.add_argument("--name", help="model name in the table (default: folder name)")
    parser.add_argument("--qformat", default="auto", help="qformat column (default: from config)")
    parser.add_argument("--batch-sizes", default=DEFAULT_BATCHES)
    parser.add_argument("--input-lens", default=DEFAULT_INPUTS)
    parser.add_argument("--output-len", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="runs per point (median kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--clock", default="wall", choices=CLOCKS, help="time steps on the wall or CPU clock"
    )
    parser.add_argument("--json", dest="json_out", help="write rows as JSON ('-' = stdout)")
    parser.add_argument("--csv", dest="csv_out", help="write rows as a profile CSV")


def qformat_of(folder: Path) -> str:
    """The checkpoint's precision as a cost-model qformat (`costmodel.roofline.QFORMATS`
    names), from its quantization config as the loader reads it: compressed-tensors
    float-quantized -> "fp8", int-quantized W8A8 -> "w8a8", weight-only int4 -> "gptq" (8-bit
    weight-only -> "w8a16"), AWQ, GPTQ and QoQ by their method; a dense checkpoint gives its
    dtype ("bf16", "fp16", "fp32"); a config the loader cannot read gives its raw
    `quant_method`."""
    from fineserve.execution.quant.config import parse_quant_config
    from fineserve.execution.quant.errors import UnsupportedQuantError

    config = json.loads((folder / "config.json").read_text())
    try:
        qcfg = parse_quant_config(config)
    except UnsupportedQuantError:
        quant = config.get("quantization_config") or config.get("compression_config") or {}
        return str(quant.get("quant_method") or "unknown").lower()
    if qcfg.method == "none":
        dtype = config.get("dtype") or config.get("torch_dtype") or "fp32"
        return str(dtype).replace("bfloat", "bf").replace("float", "fp")
    if qcfg.method == "ct-w4a16":
        return "gptq" if qcfg.bits == 4 else f"w{qcfg.bits}a16"
    return qcfg.method


@dataclass(frozen=True)
class PointSteps:
    """Every timed step of one grid point's run (seconds on the run's clock): the prefill step,
    the decode steps, the mixed steps, the decode step run right before each mixed step
    (`between`, not part of the row), and each step's start relative to the prefill's start
    in the order they ran: prefill, decodes, then between[0], mixed[0], between[1], ..."""

    prefill: float
    decode: tuple[float, ...]
    mixed: tuple[float, ...]
    starts: tuple[float, ...]
    between: tuple[float, ...] = ()

    @property
    def summary(self) -> tuple[float, float, float]:
        """(prefill, mean decode step, mean mixed step): a row's run (`row_from_runs`)."""
        tpot = statistics.fmean(self.decode) if self.decode else 0.0
        mixed = statistics.fmean(self.mixed) if self.mixed else 0.0
        return self.prefill, tpot, mixed

    @property
    def in_order(self) -> tuple[float, ...]:
        """Every step's seconds in the order they ran (as `starts`)."""
        if self.between:
            tail = tuple(t for pair in zip(self.between, self.mixed, strict=True) for t in pair)
        else:
            tail = self.mixed
        return (self.prefill, *self.decode, *tail)


def measure_point(
    folder: Path,
    batch: int,
    input_len: int,
    output_len: int,
    name: str,
    clock: str = "wall",
    arena_tokens: int | None = None,
    mixed_steps: int = 1,
) -> tuple[float, float, float]:
    """(prefill step, mean decode step, mean mixed step) seconds for one grid point, on `clock`
    (`measure_point_steps(...).summary`)."""
    steps = measure_point_steps(
        folder, batch, input_len, output_len, name, clock, arena_tokens, mixed_steps
    )
    return steps.summary


def measure_point_steps(
    folder: Path,
    batch: int,
    input_len: int,
    output_len: int,
    name: str,
    clock: str = "wall",
    arena_tokens: int | None = None,
    mixed_steps: int = 1,
) -> PointSteps:
    """Every timed step of one grid point, on `clock`.

    The batch's `batch` prompts prefill in one step, then decode `output_len - 1` steps (and
    leave). Then `batch` new sequences with prompts spread up to `input_len` tokens
    (`costmodel.table.mixed_probe_prompts`: uneven decode contexts, as a serving engine's)
    prefill and run one mixed step untimed, and then, `mixed_steps` times, one decode step and
    a mixed step: one more prompt of `input_len` tokens arrives and the next step prefills it
    beside their decodes (that prompt asks for one token, so it leaves in its step and the
    decodes stay `batch`).

    Every timed step runs warm: the engine builds kernels for each token count it meets and
    keeps a bounded number (`costmodel.kernel_cache`; a first prefill of a token count took
    17-19% longer than the next on 2026-11-22), so the point's batch runs once untimed
    first (its prefill and decode shapes) and one mixed step of the timed ones' token count
    runs untimed before them. The table predicts warm steps; the simulation charges the
    misses a run's changing token counts cause. (Before, the untimed warm-up was one prompt
    of `input_len` tokens: a batch's prefill and first decode step ran cold when their token
    counts were not held, a one-prompt prefill warm, and the first of the mixed steps cold.)
    The arena holds `arena_tokens` tokens (default: the point's own tokens, see
    `_arena_bytes`); give the arena of the run the table is for.
    """
    from fineserve.costmodel.table import mixed_probe_prompts
    from fineserve.engine.torch_executor import TorchModel, load_torch_engine
    from fineserve.execution.sampling import SamplingParams
    from fineserve.scheduler.local import SchedulerConfig
    from fineserve.sim.executor import LinearCostModel

    n_mixed = max(1, mixed_steps)
    tokens = (batch + 1) * (input_len + output_len + 2 * n_mixed)
    engine, _ = load_torch_engine(
        [TorchModel(name, folder)],
        arena_bytes=_arena_bytes(folder, tokens if arena_tokens is None else arena_tokens),
        cost_model=LinearCostModel(),
        policy="fcfs",
        config=SchedulerConfig(token_budget=batch * (input_len + 1), max_running=batch + 1),
        clock=make_clock(clock),
    )
    params = SamplingParams(temperature=0.0, ignore_eos=True)
    # first calls pay one-off costs (costmodel.kernel_cache): the same batch once untimed, so
    # its prefill and decode shapes are warm, as every timed step of the point is
    for i in range(batch):
        engine.add_request(f"warm{i}", name, [3] * input_len, max_tokens=2, sampling=params)
    engine.run_until_idle()
    for i in range(batch):
        prompt = [(17 * i + k) % 200 + 3 for k in range(input_len)]
        engine.add_request(f"p{i}", name, prompt, max_tokens=output_len, sampling=params)
    origin = engine.clock.now()
    starts: list[float] = []
    steps = []
    for _ in range(output_len):
        starts.append(engine.clock.now() - origin)
        steps.append(_timed_step(engine))
    for i, n in enumerate(mixed_probe_prompts(batch, input_len)):
        prompt = [(13 * i + k) % 200 + 3 for k in range(n)]
        engine.add_request(f"d{i}", name, prompt, max_tokens=3 + 2 * n_mixed, sampling=params)
    engine.step()  # their prefill: not part of the row
    engine.add_request("warm-mixed", name, [4] * input_len, max_tokens=1, sampling=params)
    engine.step()  # a mixed step of the timed ones' token count, untimed: they run warm
    mixed, between = [], []
    for j in range(n_mixed):
        starts.append(engine.clock.now() - origin)
        between.append(_timed_step(engine))
        prompt = [(5 + 11 * j + k) % 200 + 3 for k in range(input_len)]
        engine.add_request(f"mixed{j}", name, prompt, max_tokens=1, sampling=params)
        starts.append(engine.clock.now() - origin)
        mixed.append(_timed_step(engine))
    engine.run_until_idle()
    return PointSteps(steps[0], tuple(steps[1:]), tuple(mixed), tuple(starts), tuple(between))


def measure_kernel_miss(
    folder: Path,
    name: str,
    lengths: list[int],
    clock: str = "wall",
    arena_tokens: int | None = None,
) -> list[float]:
    """Per prompt length of `lengths` (token counts this process has not run yet), the first
    prefill of that length minus the second, seconds on `clock`: what a step pays when the
    engine's kernel cache does not hold its token count (`costmodel.kernel_cache`)."""
    from fineserve.engine.torch_executor import TorchModel, load_torch_engine
    from fineserve.execution.sampling import SamplingParams
    from fineserve.scheduler.local import SchedulerConfig
    from fineserve.sim.executor import LinearCostModel

    longest = max(lengths)
    engine, _ = load_torch_engine(
        [TorchModel(name, folder)],
        arena_bytes=_arena_bytes(folder, 2 * longest if arena_tokens is None else arena_tokens),
        cost_model=LinearCostModel(),
        policy="fcfs",
        config=SchedulerConfig(token_budget=longest, max_running=1),
        clock=make_clock(clock),
    )
    params = SamplingParams(temperature=0.0, ignore_eos=True)
    out = []
    for j, n in enumerate(lengths):
        times = []
        for rep in range(2):
            prompt = [(19 * j + 7 * rep + k) % 200 + 3 for k in range(n)]
            engine.add_request(f"k{j}.{rep}", name, prompt, max_tokens=1, sampling=params)
            times.append(_timed_step(engine))
        out.append(times[0] - times[1])
    return out


def _timed_step(engine: Any) -> float:
    start = engine.clock.now()
    engine.step()
    return float(engine.clock.now() - start)


def _arena_bytes(folder: Path, tokens: int) -> int:
    config = json.loads((folder / "config.json").read_text())
    heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    per_token = config["num_hidden_layers"] * 2 * heads * dim * 4
    return max(1 << 20, 2 * per_token * (tokens + 64 * 16))


def profile_rows(
    args: argparse.Namespace, progress: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """One row per (batch size, input length), medians of `args.repeats` interleaved runs.

    `args` carries the CLI's fields (`clock` optional, default wall; `arena_tokens` and
    `mixed_steps` optional, see `measure_point_steps`). Rows come in grid order
    (batch sizes outer); each also has `prefill_runs` / `tpot_runs` / `mixed_runs` (every run,
    seconds), which the CSV leaves out.
    """
    folder = Path(args.model)
    name = args.name or folder.name
    qformat = qformat_of(folder) if args.qformat == "auto" else args.qformat
    grid = [(b, n) for b in _ints(args.batch_sizes) for n in _ints(args.input_lens)]
    runs: dict[tuple[int, int], list[tuple[float, float, float]]] = {p: [] for p in grid}
    clock = getattr(args, "clock", "wall")
    arena_tokens = getattr(args, "arena_tokens", None)
    mixed_steps = getattr(args, "mixed_steps", 1)
    for rep in range(max(1, args.repeats)):
        if progress is not None:
            progress(f"profile {name}: pass {rep + 1}/{max(1, args.repeats)}, {len(grid)} points")
        for batch, input_len in grid:
            point = measure_point(
                folder, batch, input_len, args.output_len, name, clock, arena_tokens, mixed_steps
            )
            runs[(batch, input_len)].append(point)
    return [row_from_runs(name, qformat, b, n, args.output_len, runs[(b, n)]) for b, n in grid]


def pool_rows(*tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the same grid measured at different times, pooled: each point's runs joined and
    its medians taken again. Invariant: same points, in the first table's order; ValueError
    when a point is missing from another table."""
    first = tables[0]
    index = [{(r["model"], r["batch_size"], r["input_len"]): r for r in t} for t in tables]
    out = []
    for row in first:
        point = (row["model"], row["batch_size"], row["input_len"])
        if any(point not in ix for ix in index):
            raise ValueError(f"point {point} is not in every table")
        runs = [run for ix in index for run in _runs(ix[point])]
        out.append(
            row_from_runs(row["model"], row["qformat"], row["batch_size"], row["input_len"],
                 row["output_len"], runs)
        )  # fmt: skip
    return out


def drift(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, float]:
    """Median over points of after / before for prefill and TPOT (1.0 = the machine ran the
    engine at the same speed both times). Points are matched by (model, batch, input)."""
    ix = {(r["model"], r["batch_size"], r["input_len"]): r for r in after}
    pre, tpot = [], []
    for r in before:
        a = ix.get((r["model"], r["batch_size"], r["input_len"]))
        if a is None:
            continue
        if r["prefill_time"] > 0:
            pre.append(a["prefill_time"] / r["prefill_time"])
        if r["tpot"] > 0:
            tpot.append(a["tpot"] / r["tpot"])
    return {
        "prefill": statistics.median(pre) if pre else 1.0,
        "tpot": statistics.median(tpot) if tpot else 1.0,
    }


def _runs(row: dict[str, Any]) -> list[tuple[float, float, float]]:
    pre = row.get("prefill_runs") or [row["prefill_time"]]
    tpot = row.get("tpot_runs") or [row["tpot"]]
    mixed = row.get("mixed_runs") or [row.get("mixed_time") or 0.0] * len(pre)
    return list(zip(pre, tpot, mixed, strict=True))


def row_from_runs(
    name: str,
    qformat: str,
    batch: int,
    input_len: int,
    output_len: int,
    runs: list,
    mean: bool = False,
) -> dict[str, Any]:
    """The profile row of one grid point from its runs [(prefill, tpot, mixed) s]: medians,
    or with `mean` means (a table predicting mean step times from runs scattered by a shared
    machine's slow spells: the median of such runs is below their mean)."""
    stat = statistics.fmean if mean else statistics.median
    prefill = stat(r[0] for r in runs)
    tpot = stat(r[1] for r in runs)
    mixed = stat(r[2] for r in runs)
    decode = tpot * (output_len - 1)
    return {
        "model": name,
        "qformat": qformat,
        "tp": 1,
        "mps_percentage": 100,
        "batch_size": batch,
        "input_len": input_len,
        "output_len": output_len,
        "seq_len": input_len + output_len,
        "prefill_time": prefill,
        "decode_time": decode,
        "ttft": prefill,
        "tpot": tpot,
        "e2e": prefill + decode,
        "mixed_time": mixed,
        "prefill_runs": [r[0] for r in runs],
        "tpot_runs": [r[1] for r in runs],
        "mixed_runs": [r[2] for r in runs],
    }


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
        rows = profile_rows(args, lambda line: print(line, file=sys.stderr))
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
