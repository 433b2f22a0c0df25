"""One loaded model instance: weights, KV format, tokenizer, and (once attached to an arena)
its KV views and runner."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fineserve.execution.attention import default_backends
from fineserve.execution.fast_linear import prepack_linears
from fineserve.execution.kv_views import KVCache
from fineserve.execution.loader import LoadedModel, load_model
from fineserve.execution.runner import ModelRunner
from fineserve.execution.sampling import Sampler
from fineserve.memory.allocator import KVAllocator
from fineserve.memory.formats import KVDtype, KVFormat

# The fast CPU path; "torch" is the reference it is tested against.
DEFAULT_ATTENTION_BACKEND = "cpu"

_MODEL_KV = {torch.float32: KVDtype.FP32, torch.float16: KVDtype.FP16, torch.bfloat16: KVDtype.BF16}
_KV_NAMES = {
    "fp32": KVDtype.FP32,
    "fp16": KVDtype.FP16,
    "bf16": KVDtype.BF16,
    "fp8": KVDtype.FP8,
    "fp8_e4m3": KVDtype.FP8,
    "int8": KVDtype.INT8,
    "int4": KVDtype.INT4,
}


def resolve_kv_dtype(requested: str | None, loaded: LoadedModel) -> KVDtype:
    """Explicit request ("auto"/None: the checkpoint's KV scheme, else the model dtype)."""
    name = requested if requested not in (None, "auto") else loaded.quant.kv_cache_dtype
    if name is None:
        return _MODEL_KV[loaded.dtype]
    try:
        return _KV_NAMES[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown kv_dtype {name!r}; use one of {sorted(_KV_NAMES)}") from None


class ModelInstance:
    """A model ready to run once `attach` has given it the arena and its allocator."""

    def __init__(
        self, loaded: LoadedModel, kv_format: KVFormat, tokenizer: Any, seed: int | None
    ) -> None:
        self.loaded = loaded
        self.kv_format = kv_format
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(loaded.config.eos_token_ids) | _generation_eos(loaded.path)
        self.max_model_len = loaded.config.max_position_embeddings
        self._seed = seed
        self._runner: ModelRunner | None = None
        self._packed = False

    def attach(
        self,
        arena: torch.Tensor,
        allocator: KVAllocator,
        name: str,
        attention_backend: str = DEFAULT_ATTENTION_BACKEND,
    ) -> None:
        """Build KV views over `arena` for the page ids `allocator` gives model `name`;
        attention runs on the named backend of `default_backends()`. "cpu" (the fast CPU
        path) also swaps the model's fp32 dense linears for oneDNN-prepacked ones."""
        fmt = allocator.page_format(name)
        kv = KVCache(
            arena, fmt, allocator.page_stride(name), allocator.num_page_ids(name),
            self.loaded.kv_scales,
        )  # fmt: skip
        backend = default_backends().create(attention_backend)
        if attention_backend == "cpu" and not self._packed:
            # The fast CPU path also runs fp32 dense linears through oneDNN, prepacked once.
            prepack_linears(self.loaded.model)
            self._packed = True
        self._runner = ModelRunner(self.loaded.model, kv, backend, Sampler(self._seed))

    @property
    def runner(self) -> ModelRunner:
        if self._runner is None:
            raise RuntimeError("model instance is not attached to an arena yet")
        return self._runner

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"{self.loaded.path} has no tokenizer.json: pass token ids")
            ids = list(self.tokenizer.encode(prompt).ids)
        else:
            ids = [int(t) for t in prompt]
        vocab = self.loaded.config.vocab_size
        if not ids:
            raise ValueError("empty prompt")
        if any(t < 0 or t >= vocab for t in ids):
            raise ValueError(f"prompt has token ids outside [0, {vocab})")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds max length {self.max_model_len}")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        if self.tokenizer is None:
            return ""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))


def _generation_eos(folder: Path) -> frozenset[int]:
    path = folder / "generation_config.json"
    if not path.is_file():
        return frozenset()
    value = json.loads(path.read_text()).get("eos_token_id")
    if value is None:
        return frozenset()
    return frozenset([value] if isinstance(value, int) else value)


def _load_tokenizer(folder: Path) -> Any:
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def load_instance(
    folder: Path,
    dtype: str | torch.dtype | None,
    kv_dtype: str | None,
    tokens_per_page: int,
    seed: int | None = None,
) -> ModelInstance:
    loaded = load_model(folder, dtype)
    cfg = loaded.config
    fmt = KVFormat(
        cfg.num_layers,
        cfg.num_kv_heads,
        cfg.head_dim,
        resolve_kv_dtype(kv_dtype, loaded),
        tokens_per_page,
    )
    return ModelInstance(loaded, fmt, _load_tokenizer(folder), seed)
