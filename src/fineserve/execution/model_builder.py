"""Build a `DecoderModel` from a tensor dict (HF names) through the linear-layer API.

Projections stored dense get fused QKV and gate/up linears (one matmul instead of three/two);
quantized ones keep one module per projection, as the quant API builds them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fineserve.execution.config import ModelConfig
from fineserve.execution.layers import (
    AttentionBlock,
    DecoderLayer,
    MLPBlock,
    RMSNorm,
    SplitProjection,
)
from fineserve.execution.model import DecoderModel
from fineserve.execution.quant import (
    MissingTensorError,
    QuantConfig,
    build_linear,
    is_quantized,
    parse_quant_config,
)


def _get(tensors: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in tensors:
        raise MissingTensorError(name.rsplit(".", 1)[0], name)
    return tensors[name]


def _projection(
    cfg: QuantConfig,
    tensors: Mapping[str, torch.Tensor],
    prefixes: list[str],
    sizes: list[int],
    in_features: int,
    bias: bool,
    dtype: torch.dtype,
) -> SplitProjection:
    """One fused dense linear when unquantized, else one quant-API module per prefix."""
    biases = [_get(tensors, f"{p}.bias") if bias else None for p in prefixes]
    if any(is_quantized(cfg, p) for p in prefixes):
        parts = [
            build_linear(cfg, p, tensors, in_features, s, b, dtype)
            for p, s, b in zip(prefixes, sizes, biases, strict=True)
        ]
        return SplitProjection(parts, None, sizes)
    weight = torch.cat([_get(tensors, f"{p}.weight") for p in prefixes], dim=0)
    fused_bias = torch.cat([b for b in biases if b is not None]) if bias else None
    dense = parse_quant_config({})
    fused = build_linear(
        dense, "fused", {"fused.weight": weight}, in_features, sum(sizes), fused_bias, dtype
    )
    return SplitProjection(None, fused, sizes)


def _layer(
    config: ModelConfig,
    cfg: QuantConfig,
    tensors: Mapping[str, torch.Tensor],
    i: int,
    dtype: torch.dtype,
) -> DecoderLayer:
    p = f"model.layers.{i}"
    h, eps = config.hidden_size, config.rms_norm_eps
    a = f"{p}.self_attn"
    qkv = _projection(
        cfg,
        tensors,
        [f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"],
        [config.q_size, config.kv_size, config.kv_size],
        h,
        config.qkv_bias,
        dtype,
    )
    o_bias = _get(tensors, f"{a}.o_proj.bias") if config.o_bias else None
    o_proj = build_linear(cfg, f"{a}.o_proj", tensors, config.q_size, h, o_bias, dtype)
    q_norm = k_norm = None
    if config.qk_norm:
        q_norm = RMSNorm(_get(tensors, f"{a}.q_norm.weight").to(dtype), eps)
        k_norm = RMSNorm(_get(tensors, f"{a}.k_norm.weight").to(dtype), eps)
    heads = (config.num_heads, config.num_kv_heads, config.head_dim)
    attn = AttentionBlock(i, qkv, o_proj, heads, q_norm, k_norm, config.sliding_windows[i])
    m = f"{p}.mlp"
    inter = config.intermediate_size
    gate_up = _projection(
        cfg, tensors, [f"{m}.gate_proj", f"{m}.up_proj"], [inter, inter], h, config.mlp_bias, dtype
    )
    down_bias = _get(tensors, f"{m}.down_proj.bias") if config.mlp_bias else None
    down = build_linear(cfg, f"{m}.down_proj", tensors, inter, h, down_bias, dtype)
    return DecoderLayer(
        attn,
        MLPBlock(gate_up, down),
        RMSNorm(_get(tensors, f"{p}.input_layernorm.weight").to(dtype), eps),
        RMSNorm(_get(tensors, f"{p}.post_attention_layernorm.weight").to(dtype), eps),
    )


def _lm_head(
    config: ModelConfig, cfg: QuantConfig, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> nn.Module:
    h, vocab = config.hidden_size, config.vocab_size
    if "lm_head.weight" in tensors or not config.tie_word_embeddings:
        return build_linear(cfg, "lm_head", tensors, h, vocab, None, dtype)
    embed = {"lm_head.weight": _get(tensors, "model.embed_tokens.weight")}
    return build_linear(parse_quant_config({}), "lm_head", embed, h, vocab, None, dtype)


def build_model(
    config: ModelConfig, cfg: QuantConfig, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> DecoderModel:
    """Raises MissingTensorError (naming the tensor) before returning anything."""
    embed = _get(tensors, "model.embed_tokens.weight").to(dtype)
    layers = [_layer(config, cfg, tensors, i, dtype) for i in range(config.num_layers)]
    norm = RMSNorm(_get(tensors, "model.norm.weight").to(dtype), config.rms_norm_eps)
    lm_head = _lm_head(config, cfg, tensors, dtype)
    return DecoderModel(config, embed, layers, norm, lm_head, dtype)
