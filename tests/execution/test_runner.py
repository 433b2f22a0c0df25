"""The runner's step contract: explicit chunks in, one sampled token per sampling chunk out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fineserve.execution.attention import BackendRegistry, default_backends
from fineserve.execution.batch import SeqChunk
from fineserve.execution.kv_views import KVCache
from fineserve.execution.runner import ModelRunner
from fineserve.execution.sampling import SamplingParams
from fineserve.execution.testing import load, make_runner, make_tiny
from fineserve.memory.formats import KVDtype, KVFormat

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny("llama", tmp_path_factory.mktemp("r") / "m")


@pytest.fixture(scope="module")
def runner(folder: Path) -> ModelRunner:
    return make_runner(load(folder), num_pages=16)


def test_step_samples_only_where_asked_and_mixes_prefill_with_decode(runner: ModelRunner) -> None:
    first = runner.step([SeqChunk("a", [1, 2, 3, 4, 5], 0, [0, 1], GREEDY)])[0]
    assert first is not None
    mixed = runner.step(
        [
            SeqChunk("a", [first.token_id], 5, [0, 1], GREEDY, output_index=1),
            SeqChunk("b", [7, 8, 9], 0, [2], None),
        ]
    )
    assert mixed[0] is not None and mixed[1] is None


def test_step_rejects_bad_chunks(runner: ModelRunner) -> None:
    with pytest.raises(ValueError, match="outside"):
        runner.step([SeqChunk("a", [1, 2], 0, [99], GREEDY)])
    with pytest.raises(ValueError, match="fewer than"):
        runner.step([SeqChunk("a", [1, 2, 3, 4, 5], 0, [0], GREEDY)])
    with pytest.raises(ValueError, match="at least one"):
        runner.step([])
    with pytest.raises(ValueError, match="empty chunk"):
        runner.step([SeqChunk("a", [], 0, [0], GREEDY)])


def test_runner_rejects_kv_format_of_another_shape(runner: ModelRunner) -> None:
    fmt = KVFormat(3, 2, 16, KVDtype.FP32, 4)
    kv = KVCache(torch.zeros(fmt.page_bytes * 2, dtype=torch.uint8), fmt, fmt.page_bytes, 2)
    with pytest.raises(ValueError, match="does not fit"):
        ModelRunner(runner.model, kv)


def test_backend_registry() -> None:
    registry = default_backends()
    assert registry.names() == ["cpu", "torch"]
    assert registry.create("torch").name == "torch"
    with pytest.raises(ValueError, match="unknown attention backend 'cuda'"):
        registry.create("cuda")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("torch", registry.create)  # type: ignore[arg-type]
    assert BackendRegistry().names() == []


@pytest.mark.parametrize("kind", ["fp16", "int8"])
def test_garbage_bytes_in_unused_slots_never_leak(folder: Path, kind: str) -> None:
    """Pages past a context hold other models' bytes (here 0xFF: NaN as fp16/scales)."""
    from fineserve.execution.testing import run_greedy

    loaded = load(folder, "fp16")
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8]]
    clean = run_greedy(make_runner(loaded, kind, num_pages=64), prompts, 5)
    size = make_runner(loaded, kind, num_pages=64).kv.fmt.page_bytes * 64
    dirty = make_runner(loaded, kind, arena=torch.full((size,), 255, dtype=torch.uint8))
    assert run_greedy(dirty, prompts, 5) == clean
