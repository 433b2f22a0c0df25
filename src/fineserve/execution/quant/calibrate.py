"""Static FP8 KV-cache scales for a dense model, calibrated on the built-in corpus.

For each decoder layer, k_scale = sqrt(2) * max|K| / 448 and v_scale = max|V| / 448, where K is
the key projection output (after q/k norm where the architecture has one; the sqrt(2) bounds the
growth of a component under rotary embedding) and V the value projection output, over a fixed
calibration batch. Scales are float32 tensors of shape [1] named
`model.layers.N.self_attn.{k,v}_scale`, as llmcompressor names them (make-model stores them in
the model dtype, as llmcompressor does).
"""

from __future__ import annotations

from typing import Any

import torch

FP8_MAX = 448.0


def _calibration_ids(vocab_size: int, n_tokens: int = 256) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    return torch.randint(5, vocab_size, (2, n_tokens // 2), generator=gen)


def fp8_kv_scales(hf_config: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """{name: float32 [1]} k/v scales for every layer of the model given by `state`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**{k: v for k, v in hf_config.items() if k != "dtype"})
    model = AutoModelForCausalLM.from_config(config).float().eval()
    model.load_state_dict(state, strict=False)
    amax: dict[str, float] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        k_mod = getattr(attn, "k_norm", None) or attn.k_proj
        for kind, mod in (("k", k_mod), ("v", attn.v_proj)):
            key = f"model.layers.{i}.self_attn.{kind}_scale"

            def hook(_m: Any, _i: Any, out: torch.Tensor, key: str = key) -> None:
                amax[key] = max(amax.get(key, 0.0), float(out.detach().abs().max()))

            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=_calibration_ids(int(hf_config["vocab_size"])))
    for h in hooks:
        h.remove()
    factor = {"k": 2.0**0.5, "v": 1.0}
    return {
        key: torch.tensor([max(val, 1e-6) * factor[key[-7]] / FP8_MAX], dtype=torch.float32)
        for key, val in amax.items()
    }
