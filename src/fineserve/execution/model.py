"""The decoder-only model shared by Llama, Mistral, Qwen2 and Qwen3 (differences are config
flags: attention biases, q/k norm, sliding windows, tied embeddings)."""

from __future__ import annotations

import torch
from torch import nn

from fineserve.execution.config import ModelConfig
from fineserve.execution.layers import DecoderLayer, ForwardContext, RMSNorm
from fineserve.execution.rope import RotaryEmbedding


class DecoderModel(nn.Module):
    """embed -> layers -> final norm -> lm_head, over a flattened varlen batch of tokens.

    `forward` returns hidden states [N, hidden]; `logits` projects the selected rows to fp32
    logits. The model owns no KV memory: every step brings its context (arena views, metadata).
    """

    def __init__(
        self,
        config: ModelConfig,
        embed: torch.Tensor,
        layers: list[DecoderLayer],
        norm: RMSNorm,
        lm_head: nn.Module,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.embed = nn.Parameter(embed, requires_grad=False)
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.lm_head = lm_head
        self.rotary = RotaryEmbedding(config.rope, config.head_dim)

    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        h = nn.functional.embedding(input_ids, self.embed)
        for layer in self.layers:
            h = layer(h, ctx)
        return self.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
