"""oneDNN-prepacked linears (fast CPU path) against the dense reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fineserve.execution.fast_linear import PackedLinear, onednn_available, prepack_linears
from fineserve.execution.quant.linear import DenseLinear

pytestmark = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_packed_linear_matches_dense(bias: bool, rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(96, 80, generator=gen)
    b = torch.randn(96, generator=gen) if bias else None
    dense = DenseLinear(w, b, torch.float32)
    packed = PackedLinear(dense)
    x = torch.randn(rows, 80, generator=gen)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), dense(x), rtol=1e-5, atol=1e-5)
        x3 = x.reshape(1, rows, 80)
        assert packed(x3).shape == (1, rows, 96)
        torch.testing.assert_close(packed(x3)[0], dense(x), rtol=1e-5, atol=1e-5)


def test_packed_linear_rejects_half_weights() -> None:
    with pytest.raises(ValueError, match="fp32"):
        PackedLinear(DenseLinear(torch.randn(8, 8), None, torch.float16))


def test_prepack_keeps_logits(tmp_path: Path) -> None:
    from fineserve.execution.testing import load, make_runner, make_tiny, run_greedy

    folder = make_tiny("llama", tmp_path / "llama", seed=5)
    loaded = load(folder)
    runner = make_runner(loaded)
    prompts = [[5, 9, 3, 17, 2, 8], [4, 4, 7]]
    want = run_greedy(runner, prompts, 6)
    x = torch.randn(5, loaded.config.hidden_size)
    with torch.inference_mode():
        before = runner.model.logits(x)
    assert prepack_linears(loaded.model) == 4 * loaded.config.num_layers + 1
    assert not any(isinstance(m, DenseLinear) for m in loaded.model.modules())
    with torch.inference_mode():
        torch.testing.assert_close(runner.model.logits(x), before, rtol=1e-5, atol=1e-5)
    assert run_greedy(make_runner(loaded, backend="cpu"), prompts, 6) == want


def test_prepack_skips_half_models(tmp_path: Path) -> None:
    from fineserve.execution.testing import load, make_tiny

    loaded = load(make_tiny("llama", tmp_path / "llama16", seed=5), dtype="fp16")
    assert prepack_linears(loaded.model) == 0
