"""The engine with the real torch executor on tiny models of three precisions in one arena."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fineserve.engine.clock import VirtualClock
from fineserve.engine.torch_executor import TorchModel, load_torch_engine
from fineserve.execution import make_model
from fineserve.execution.llm import LLM
from fineserve.execution.sampling import SamplingParams
from fineserve.scheduler.local import InvalidRequestError, SchedulerConfig
from fineserve.sim.executor import LinearCostModel

MODELS = {
    "llama": ("llama", "fp16"),
    "qwen": ("qwen2", "awq"),
    "mistral": ("mistral", "gptq"),
    "fp8": ("mistral", "fp8"),
}
ARENA = 4 << 20
GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    out: dict[str, Path] = {}
    for name, (arch, precision) in MODELS.items():
        parser = argparse.ArgumentParser()
        make_model.add_arguments(parser)
        args = ["--arch", arch, "--size", "tiny", "--precision", precision]
        make_model.run(parser.parse_args([*args, "--out", str(root / name)]))
        out[name] = root / name
    return out


MIXED = ("llama", "qwen", "mistral", "fp8")


def prompts() -> list[tuple[str, str, list[int]]]:
    return [
        (f"r{i}", MIXED[i % 4], [(7 * i + k) % 400 + 3 for k in range(5 + 11 * i)])
        for i in range(12)
    ]


def test_mixed_precision_engine_matches_each_model_run_alone(folders: dict[str, Path]) -> None:
    engine, _ = load_torch_engine(
        [TorchModel(n, folders[n]) for n in MIXED],
        ARENA,
        LinearCostModel(),
        policy="saab",
        config=SchedulerConfig(token_budget=32),  # forces chunked prefill beside decodes
        clock=VirtualClock(),
    )
    for rid, model, prompt in prompts():
        engine.add_request(rid, model, prompt, max_tokens=6, sampling=GREEDY)
    got: dict[str, list[int]] = {}
    for out in engine.run_until_idle():
        got.setdefault(out.request_id, []).extend(out.token_ids)
    for name in MIXED:
        folder = folders[name]
        mine = [(rid, p) for rid, m, p in prompts() if m == name]
        alone = LLM({name: str(folder)}, arena_bytes=ARENA).generate([p for _, p in mine], GREEDY)
        for (rid, _), ref in zip(mine, alone, strict=True):
            assert got[rid] == ref.token_ids, rid
    alloc = engine.scheduler.pages.allocator
    assert all(alloc.used_pages(m) == 0 for m in MIXED)


def test_fp8_kv_ignores_stale_bytes_in_reused_pages(folders: dict[str, Path]) -> None:
    """A slab another model used leaves bytes behind; 0x7F is an FP8 NaN. Masked positions
    must not leak it into attention (regression: it did, through 0 * NaN)."""
    engine, instances = load_torch_engine(
        [TorchModel("fp8", folders["fp8"])], ARENA, LinearCostModel(), clock=VirtualClock()
    )
    prompt = [(14 + k) % 400 + 3 for k in range(27)]
    engine.add_request("clean", "fp8", prompt, max_tokens=6, sampling=GREEDY)
    clean = [t for o in engine.run_until_idle() for t in o.token_ids]
    instances["fp8"].runner.kv.layer(0).k.fill_(0x7F)  # what another model left behind
    engine.add_request("stale", "fp8", prompt, max_tokens=6, sampling=GREEDY)
    assert [t for o in engine.run_until_idle() for t in o.token_ids] == clean


def test_bad_input_is_refused_and_the_engine_keeps_serving(folders: dict[str, Path]) -> None:
    engine, instances = load_torch_engine(
        [TorchModel("llama", folders["llama"])], ARENA, LinearCostModel(), clock=VirtualClock()
    )
    too_long = [5] * instances["llama"].max_model_len
    with pytest.raises(InvalidRequestError, match="does not fit"):
        engine.add_request("x", "llama", too_long, max_tokens=1)
    with pytest.raises(InvalidRequestError, match="unknown model"):
        engine.add_request("y", "gpt", [1], max_tokens=1)
    engine.add_request("z", "llama", [5, 6, 7], max_tokens=3, sampling=GREEDY)
    outs = engine.run_until_idle()
    assert sum(len(o.token_ids) for o in outs) == 3 and outs[-1].finish_reason == "length"
