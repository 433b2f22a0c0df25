"""The fast CPU backend ("cpu") against the torch reference on random paged inputs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from fineserve.execution.attention import TorchReferenceBackend, default_backends
from fineserve.execution.batch import SeqChunk, build_metadata
from fineserve.execution.fast_attention import CpuFastBackend
from fineserve.execution.kv_views import KVCache
from fineserve.memory.formats import KVDtype, KVFormat

TOL = {
    KVDtype.FP32: 1e-5,
    KVDtype.FP16: 1e-5,
    KVDtype.BF16: 1e-5,
    KVDtype.INT8: 1e-5,
    KVDtype.INT4: 1e-5,
    KVDtype.FP8: 1e-5,
}


def _random_step(
    rng: random.Random, num_pages: int, tpp: int, decodes: int, prefills: int
) -> list[SeqChunk]:
    """Chunks with disjoint shuffled pages: decodes (1 token) and prefills over a paged prefix."""
    pool = list(range(num_pages))
    rng.shuffle(pool)
    chunks = []
    kinds = ["d"] * decodes + ["p"] * prefills
    rng.shuffle(kinds)
    for i, kind in enumerate(kinds):
        if kind == "d":
            start, n = rng.randint(1, 40), 1
        else:
            start, n = rng.choice([0, 0, rng.randint(1, 30)]), rng.randint(1, 24)
        need = -(-(start + n) // tpp) + rng.randint(0, 2)  # spare pages past the context
        pages = [pool.pop() for _ in range(need)]
        chunks.append(SeqChunk(i, [1] * n, start, pages))
    return chunks


def _fill(arena: torch.Tensor, seed: int) -> None:
    """Random bytes everywhere, including 0xFF runs (NaN as fp16/bf16/fp8, huge int scales)."""
    gen = torch.Generator().manual_seed(seed)
    arena.copy_(torch.randint(0, 256, arena.shape, dtype=torch.uint8, generator=gen))
    arena[: arena.numel() // 3].fill_(0xFF)


def _write_context(kv: KVCache, chunks: list[SeqChunk], hkv: int, d: int, seed: int) -> None:
    """Valid KV for every context token (prefix and new tokens), as the model would write."""
    gen = torch.Generator().manual_seed(seed)
    tpp = kv.tokens_per_page
    for c in chunks:
        pos = torch.arange(c.context_len)
        pages = torch.tensor(c.pages, dtype=torch.long)[pos // tpp]
        for layer in kv.layers:
            k = torch.randn(c.context_len, hkv, d, generator=gen)
            v = torch.randn(c.context_len, hkv, d, generator=gen)
            layer.write(k, v, pages, pos % tpp)


@pytest.mark.parametrize("kind", list(KVDtype))
@pytest.mark.parametrize(("hq", "hkv"), [(4, 4), (6, 2), (8, 1)])
@pytest.mark.parametrize("window", [None, 5])
def test_fast_matches_reference_on_random_paged_steps(
    kind: KVDtype, hq: int, hkv: int, window: int | None
) -> None:
    d, tpp, num_pages = 16, 4, 96
    fmt = KVFormat(2, hkv, d, kind, tpp)
    stride = fmt.page_bytes + 24  # pages not back to back, like a shared arena
    arena = torch.empty(stride * num_pages, dtype=torch.uint8)
    ref, fast = TorchReferenceBackend(), CpuFastBackend()
    for seed in range(4):
        rng = random.Random(seed)
        _fill(arena, seed)
        kv = KVCache(arena, fmt, stride, num_pages)
        decodes, prefills = [(5, 0), (0, 4), (3, 3), (1, 1)][seed]
        chunks = _random_step(rng, num_pages, tpp, decodes, prefills)
        _write_context(kv, chunks, hkv, d, seed)
        meta = build_metadata(chunks, tpp)
        q = torch.randn(meta.num_tokens, hq, d, generator=torch.Generator().manual_seed(seed))
        for layer in kv.layers:
            want = ref.forward(q, layer, meta, d**-0.5, window)
            got = fast.forward(q, layer, meta, d**-0.5, window)
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, want, atol=TOL[kind], rtol=TOL[kind])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fast_matches_reference_in_activation_dtypes(dtype: torch.dtype) -> None:
    d, tpp, num_pages, hq, hkv = 32, 8, 64, 4, 2
    fmt = KVFormat(1, hkv, d, KVDtype.FP16, tpp)
    arena = torch.empty(fmt.page_bytes * num_pages, dtype=torch.uint8)
    _fill(arena, 7)
    kv = KVCache(arena, fmt, fmt.page_bytes, num_pages)
    chunks = _random_step(random.Random(7), num_pages, tpp, 4, 3)
    _write_context(kv, chunks, hkv, d, 7)
    meta = build_metadata(chunks, tpp)
    q = torch.randn(meta.num_tokens, hq, d).to(dtype)
    want = TorchReferenceBackend().forward(q, kv.layers[0], meta, d**-0.5, None)
    got = CpuFastBackend().forward(q, kv.layers[0], meta, d**-0.5, None)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


def test_prefill_groups_bound_padding() -> None:
    """One long prompt among short ones runs in its own group (no 30x padded work)."""
    tpp = 4
    chunks = [SeqChunk(0, [1] * 200, 0, list(range(50)))]
    chunks += [SeqChunk(i, [1] * 3, 0, [50 + i]) for i in range(1, 9)]
    meta = build_metadata(chunks, tpp)
    backend = CpuFastBackend()
    groups = backend._prefill_plan(meta, None)
    assert sorted(g.page_table.shape[0] for g in groups) == [1, 8]
    rows = torch.cat([g.out_rows for g in groups])
    assert sorted(rows.tolist()) == list(range(meta.num_tokens))


def test_registry_creates_fast_backend() -> None:
    assert default_backends().create("cpu").name == "cpu"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fineserve.execution.testing import make_tiny

    return make_tiny("qwen2", tmp_path_factory.mktemp("m") / "qwen2", seed=3)


def test_fast_backend_greedy_equals_transformers(folder: Path) -> None:
    from fineserve.execution.testing import hf_greedy, load, make_runner, run_greedy

    prompts = [[5, 9, 3, 17, 2, 8, 11], [4, 4, 7], [12, 30, 2, 2, 9, 1, 5, 6, 7, 8, 3]]
    runner = make_runner(load(folder), backend="cpu")
    got = run_greedy(runner, prompts, 8, chunk=4)
    assert got == [hf_greedy(folder, p, 8) for p in prompts]


@pytest.mark.parametrize("kind", ["fp16", "int8", "int4", "fp8"])
def test_fast_backend_ignores_garbage_past_contexts(folder: Path, kind: str) -> None:
    """Unused slots hold 0xFF (NaN as fp16/fp8, NaN scales): same tokens as a clean arena."""
    from fineserve.execution.testing import load, make_runner, run_greedy

    loaded = load(folder)
    prompts = [[5, 9, 3, 17, 2], [4, 4, 7, 1, 1, 2, 3, 9, 9]]
    clean = make_runner(loaded, kind, backend="cpu")
    want = run_greedy(clean, prompts, 6)
    arena = torch.full((clean.kv.fmt.page_bytes * 256,), 0xFF, dtype=torch.uint8)
    dirty = make_runner(loaded, kind, backend="cpu", arena=arena)
    assert run_greedy(dirty, prompts, 6) == want
