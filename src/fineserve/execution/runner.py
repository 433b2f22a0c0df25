"""Model runner: executes one step for a batch of sequences of one model.

The step interface is explicit, so any scheduler (the offline `LLM`, the engine's `Executor`)
can drive it: the caller says which sequences run, which new tokens each brings, where their
context starts and which pages hold it (`SeqChunk`); the runner writes the new tokens' K/V into
those pages and returns one sampled token per chunk that asked for one. The runner owns no
pages and no sequence state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fineserve.execution.attention import AttentionBackend, TorchReferenceBackend
from fineserve.execution.batch import AttentionMetadata, SeqChunk, build_metadata
from fineserve.execution.kv_views import KVCache
from fineserve.execution.layers import ForwardContext
from fineserve.execution.model import DecoderModel
from fineserve.execution.sampling import Sampler, SampleResult


class ModelRunner:
    """Runs `model` over its KV pages in `kv` (views of the shared arena)."""

    def __init__(
        self,
        model: DecoderModel,
        kv: KVCache,
        backend: AttentionBackend | None = None,
        sampler: Sampler | None = None,
    ) -> None:
        cfg = model.config
        fmt = kv.fmt
        if (fmt.num_layers, fmt.kv_heads, fmt.head_dim) != (
            cfg.num_layers,
            cfg.num_kv_heads,
            cfg.head_dim,
        ):
            raise ValueError(f"KV format {fmt.describe()} does not fit the model's shape")
        self.model = model
        self.kv = kv
        self.backend = backend or TorchReferenceBackend()
        self.sampler = sampler or Sampler()

    @property
    def tokens_per_page(self) -> int:
        return self.kv.tokens_per_page

    def _forward(self, meta: AttentionMetadata) -> torch.Tensor:
        cos, sin = self.model.rotary.cos_sin(meta.positions, self.model.dtype)
        ctx = ForwardContext(meta, self.kv, self.backend, cos, sin)
        return self.model(meta.input_ids, ctx)

    def _metadata(self, chunks: Sequence[SeqChunk]) -> AttentionMetadata:
        """Build step metadata; every page id the step touches must be in [0, num_pages)."""
        meta = build_metadata(chunks, self.tokens_per_page)
        tables = [meta.slot_pages] + [p.page_table.reshape(-1) for p in meta.prefills]
        if meta.decode is not None:
            tables.append(meta.decode.page_table.reshape(-1))
        used = torch.cat(tables)
        limit = self.kv.num_pages
        if int(used.min()) < 0 or int(used.max()) >= limit:
            raise ValueError(f"a page id of this step lies outside [0, {limit})")
        return meta

    @torch.inference_mode()
    def compute_logits(self, chunks: Sequence[SeqChunk]) -> torch.Tensor:
        """Run the step and return fp32 logits [len(chunks), vocab] of each chunk's last token."""
        meta = self._metadata(chunks)
        hidden = self._forward(meta)
        return self.model.logits(hidden[meta.last_rows])

    @torch.inference_mode()
    def step(self, chunks: Sequence[SeqChunk]) -> list[SampleResult | None]:
        """Run one step; result i is chunk i's sampled token (None where `sampling` is None)."""
        meta = self._metadata(chunks)
        hidden = self._forward(meta)
        wanted = [i for i, c in enumerate(chunks) if c.sampling is not None]
        results: list[SampleResult | None] = [None] * len(chunks)
        if not wanted:
            return results
        rows = meta.last_rows[torch.tensor(wanted, dtype=torch.long)]
        logits = self.model.logits(hidden[rows])
        params = [chunks[i].sampling for i in wanted]
        indices = [chunks[i].output_index for i in wanted]
        sampled = self.sampler.sample(logits, params, indices)  # type: ignore[arg-type]
        for i, r in zip(wanted, sampled, strict=True):
            results[i] = r
        return results
