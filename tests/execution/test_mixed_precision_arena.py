"""make-model checkpoints of several precisions (FP8 KV, INT4 KV, W4A16, fp16) sharing one
arena: KV formats come from the checkpoints, and each model produces what it does alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from fineserve import LLM, SamplingParams
from fineserve.cli import main as cli
from fineserve.memory.formats import KVDtype

PRECISIONS = {"fp16": KVDtype.FP16, "fp8": KVDtype.FP8, "qoq": KVDtype.INT4, "awq": KVDtype.FP16}
PROMPTS = [[5, 17, 42, 9, 100, 3, 77, 1, 2], [8, 1, 30], [200, 13, 14, 15]]
GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mixed")
    out = {}
    for i, precision in enumerate(PRECISIONS):
        folder = root / precision
        args = ["make-model", "--arch", ["llama", "qwen3", "qwen2", "mistral"][i]]
        assert cli([*args, "--precision", precision, "--out", str(folder), "--seed", "3"]) in (
            0,
            None,
        )
        out[precision] = folder
    return out


def test_mixed_precision_models_share_one_arena(folders: dict[str, Path]) -> None:
    llm = LLM(folders, arena_bytes=2 << 20, tokens_per_page=8)
    for name, kind in PRECISIONS.items():
        assert llm.allocator.page_format(name).dtype is kind
    names = [n for n in PRECISIONS for _ in PROMPTS]
    prompts = [p for _ in PRECISIONS for p in PROMPTS]
    together = llm.generate(prompts, GREEDY, model=names)
    for name, folder in folders.items():
        alone = LLM({name: folder}, arena_bytes=1 << 20).generate(PROMPTS, GREEDY)
        got = [o.token_ids for o in together if o.model == name]
        assert got == [o.token_ids for o in alone]
    for name in PRECISIONS:
        assert llm.allocator.used_pages(name) == 0
    llm.allocator.check_integrity()
