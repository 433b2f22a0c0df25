"""`fineserve make-model`: write a Hugging Face model folder with seeded random weights.

The folder holds config.json (transformers' spelling for the architecture; `--config-style v4`
writes `rope_theta`/`rope_scaling`/`torch_dtype` instead of v5's `rope_parameters`/`dtype`),
model.safetensors, generation_config.json and a byte-level BPE tokenizer trained offline with a
chat template. Quantized precisions write the on-disk layouts of the real tools (see
docs/formats.md). Invariant: the same arguments (including `--seed`) give byte-identical weights.
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path
from typing import Any

ARCHS = ("llama", "mistral", "qwen2", "qwen3")
PRECISIONS = ("fp32", "fp16", "bf16", "awq", "gptq", "ct-w4a16", "fp8", "w8a8", "qoq")
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
             "vocab_size": 512},
    "small": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6,
              "num_key_value_heads": 2, "head_dim": 64, "intermediate_size": 1024,
              "vocab_size": 2048},
}  # fmt: skip
ROPE_THETA = {"llama": 500000.0, "mistral": 1000000.0, "qwen2": 1000000.0, "qwen3": 1000000.0}
TIED_BY_DEFAULT = {"llama": True, "mistral": False, "qwen2": True, "qwen3": True}
ARCH_CLASS = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
MAX_POSITIONS = 2048


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register make-model's options."""
    parser.add_argument("--arch", required=True, choices=ARCHS)
    parser.add_argument("--size", default="tiny", choices=tuple(SIZES))
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rope-scaling", default="none", choices=("none", "llama3"))
    parser.add_argument("--tie-embeddings", default="auto", choices=("auto", "yes", "no"))
    parser.add_argument("--config-style", default="v5", choices=("v5", "v4"))
    parser.add_argument("--group-size", type=int, default=128, help="upper bound; see docs")
    parser.add_argument("--desc-act", action="store_true", help="GPTQ: act-order g_idx")
    parser.add_argument(
        "--weight-strategy", default="channel", choices=("channel", "tensor"), help="FP8 scale"
    )
    parser.add_argument(
        "--no-kv-quant", action="store_true", help="fp8/qoq: no quantized KV cache in config"
    )


def hf_config_dict(arch: str, size: str, tie: bool, rope_scaling: str) -> dict[str, Any]:
    """config.json content (transformers 5 spelling) before dtype and quantization keys."""
    from transformers import CONFIG_MAPPING

    kwargs: dict[str, Any] = dict(SIZES[size])
    kwargs.update(
        max_position_embeddings=MAX_POSITIONS, rms_norm_eps=1e-6, tie_word_embeddings=tie,
        rope_theta=ROPE_THETA[arch], bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    if arch == "mistral":
        kwargs["sliding_window"] = None
    if rope_scaling == "llama3":
        kwargs["rope_scaling"] = {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": MAX_POSITIONS // 8,
        }  # fmt: skip
    config = CONFIG_MAPPING[arch](**kwargs)
    d = config.to_diff_dict()
    d["architectures"] = [ARCH_CLASS[arch]]
    return d


def to_v4_style(d: dict[str, Any]) -> dict[str, Any]:
    """Rewrite v5 keys into the transformers 4 spelling (rope_theta, rope_scaling, torch_dtype)."""
    d = dict(d)
    rope = dict(d.pop("rope_parameters", None) or {})
    if "rope_theta" in rope:
        d["rope_theta"] = rope.pop("rope_theta")
    if rope.get("rope_type", "default") != "default":
        d["rope_scaling"] = rope
    if "dtype" in d:
        d["torch_dtype"] = d.pop("dtype")
    d.pop("layer_types", None)
    return d


def _init_std(name: str, shape: tuple[int, ...], hidden: int, tied: bool) -> tuple[float, float]:
    """(mean, std) of a parameter's random init; chosen so logits are peaked, not uniform."""
    if "norm" in name:
        return 1.0, 0.1
    if name.endswith(".bias"):
        return 0.0, 0.1
    if "embed_tokens" in name and not tied:
        return 0.0, 1.0
    if "embed_tokens" in name or "lm_head" in name:
        return 0.0, 3.0 / hidden**0.5
    return 0.0, 1.0 / shape[-1] ** 0.5


def random_state_dict(hf_config: dict[str, Any], seed: int) -> dict[str, Any]:
    """Seeded float32 weights for every persistent parameter of the HF model (tied: no lm_head).

    Each tensor draws from its own generator seeded by (seed, crc32(name)), so one tensor's
    values do not depend on which other tensors exist.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**hf_config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tied = bool(hf_config.get("tie_word_embeddings"))
    hidden = int(hf_config["hidden_size"])
    out = {}
    for name, meta in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        mean, std = _init_std(name, tuple(meta.shape), hidden, tied)
        out[name] = torch.randn(tuple(meta.shape), generator=gen) * std + mean
    return out


def _generation_config(eos_ids: list[int]) -> dict[str, Any]:
    return {"bos_token_id": 1, "eos_token_id": eos_ids, "pad_token_id": 0, "do_sample": False}


def _weights_and_config(args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Any]:
    """Tensors to save; adds dtype and quantization_config keys to `config` in place."""
    import torch

    from fineserve.execution.quant.calibrate import fp8_kv_scales
    from fineserve.execution.quant.export import BASE_DTYPE, ExportOptions, export_quantized

    state = random_state_dict(config, args.seed)
    dense = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if args.precision in dense:
        dtype = dense[args.precision]
        tensors = {k: v.to(dtype).contiguous() for k, v in state.items()}
    else:
        opts = ExportOptions(
            group_size=args.group_size, desc_act=args.desc_act,
            weight_strategy=args.weight_strategy, kv_cache=not args.no_kv_quant, seed=args.seed,
        )  # fmt: skip
        tensors, qc = export_quantized(state, args.precision, opts)
        if qc.get("kv_cache_scheme"):
            base = BASE_DTYPE[args.precision]
            tensors.update({k: v.to(base) for k, v in fp8_kv_scales(config, state).items()})
        config["quantization_config"] = qc
        dtype = BASE_DTYPE[args.precision]
    config["dtype"] = str(dtype).removeprefix("torch.")
    return tensors


def run(args: argparse.Namespace) -> int:
    """Write the model folder; returns 0. User errors raise `CliError`."""
    from safetensors.torch import save_file

    from fineserve.cli import CliError
    from fineserve.execution.tokenizer_train import save_hf_tokenizer, train_tokenizer

    if args.rope_scaling == "llama3" and args.arch != "llama":
        raise CliError("--rope-scaling llama3 applies to --arch llama only")
    if args.group_size <= 0:
        raise CliError("--group-size must be positive")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CliError(f"{out} exists and is not a folder")
    tie = (
        TIED_BY_DEFAULT[args.arch]
        if args.tie_embeddings == "auto"
        else args.tie_embeddings == "yes"
    )
    config = hf_config_dict(args.arch, args.size, tie, args.rope_scaling)
    try:
        tensors = _weights_and_config(args, config)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(int(config["vocab_size"]))
    info = save_hf_tokenizer(tok, out, MAX_POSITIONS)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    if args.config_style == "v4":
        config = to_v4_style(config)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    gen = _generation_config([info.eos_id, info.im_end_id])
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    n_params = sum(t.numel() for t in tensors.values())
    print(f"wrote {out}: {args.arch} {args.size} {args.precision}, {n_params} stored values")
    return 0


def write_from_argv(out: Path, *argv: str) -> Path:
    """Run make-model with the command-line options `argv` into `out`; returns `out`."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    status = run(parser.parse_args([*argv, "--out", str(out)]))
    if status != 0:
        raise RuntimeError(f"make-model {' '.join(argv)} exited with {status}")
    return out


def write_model(out: Path, arch: str, size: str = "tiny", precision: str = "fp32") -> Path:
    """Write a model folder with make-model's defaults for every other option; returns it."""
    return write_from_argv(out, "--arch", arch, "--size", size, "--precision", precision)


def ensure_model(out: Path, arch: str, size: str = "tiny", precision: str = "fp32") -> Path:
    """Like `write_model`, but a folder that already holds a config.json is reused as is."""
    if not (out / "config.json").is_file():
        write_model(out, arch, size, precision)
    return out
