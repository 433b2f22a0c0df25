"""Reading a checkpoint's `quantization_config` into one frozen `QuantConfig`.

Methods: "none" (dense), "awq" (AutoAWQ GEMM), "gptq" (AutoGPTQ / gptqmodel, formats gptq and
gptq_v2), "ct-w4a16" (compressed-tensors pack-quantized, weight-only int4/int8), "fp8"
(compressed-tensors float-quantized), "w8a8" (compressed-tensors int-quantized) and "qoq"
(FineServe's own W4A8 layout, see docs/formats.md). Anything else raises
`UnsupportedQuantError` naming the method.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fineserve.execution.quant.errors import UnsupportedQuantError

METHODS = ("none", "awq", "gptq", "ct-w4a16", "fp8", "w8a8", "qoq")


@dataclass(frozen=True)
class QuantConfig:
    """How a checkpoint's linear weights (and optionally activations and KV) are quantized.

    `group_size` None means one group spanning all input features (per output channel).
    `act_bits` None means weight-only. `kv_cache_dtype` is set only when the checkpoint asks for
    a quantized KV cache. `ignore` holds compressed-tensors ignore entries (exact names or
    "re:" regexes); `not_convert` holds AWQ/GPTQ substrings of module names left dense.
    """

    method: str
    bits: int = 16
    group_size: int | None = None
    zero_point: bool = False
    desc_act: bool = False
    checkpoint_format: str = ""
    weight_type: str = "float"
    weight_strategy: str = ""
    act_bits: int | None = None
    act_type: str | None = None
    act_dynamic: bool = True
    act_strategy: str | None = None
    ignore: tuple[str, ...] = ()
    not_convert: tuple[str, ...] = ()
    targets: tuple[str, ...] = ("Linear",)
    kv_cache_dtype: str | None = None


def _group(value: Any) -> int | None:
    return None if value in (None, -1, 0) else int(value)


def _parse_awq(qc: Mapping[str, Any]) -> QuantConfig:
    version = str(qc.get("version", "gemm")).lower()
    if version != "gemm":
        raise UnsupportedQuantError(f"AWQ version {version!r} is not supported (only 'gemm')")
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    if bits != 4:
        raise UnsupportedQuantError(f"AWQ with {bits} bits is not supported (only 4)")
    return QuantConfig(
        method="awq",
        bits=4,
        group_size=_group(qc.get("group_size", qc.get("q_group_size", 128))),
        zero_point=bool(qc.get("zero_point", True)),
        checkpoint_format="gemm",
        weight_type="int",
        weight_strategy="group",
        not_convert=tuple(qc.get("modules_to_not_convert") or ()),
    )


def _parse_gptq(qc: Mapping[str, Any]) -> QuantConfig:
    bits = int(qc.get("bits", 4))
    if bits not in (2, 4, 8):
        raise UnsupportedQuantError(f"GPTQ with {bits} bits is not supported (2, 4 or 8)")
    fmt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise UnsupportedQuantError(f"GPTQ checkpoint_format {fmt!r} is not supported")
    return QuantConfig(
        method="gptq",
        bits=bits,
        group_size=_group(qc.get("group_size", 128)),
        zero_point=not bool(qc.get("sym", True)),
        desc_act=bool(qc.get("desc_act", False)),
        checkpoint_format=fmt,
        weight_type="int",
        weight_strategy="group",
        not_convert=tuple(qc.get("modules_to_not_convert") or ()),
    )


def _kv_dtype(scheme: Mapping[str, Any] | None) -> str | None:
    if not scheme:
        return None
    kind, bits = str(scheme.get("type", "float")), int(scheme.get("num_bits", 8))
    name = {("float", 8): "fp8", ("int", 8): "int8", ("int", 4): "int4"}.get((kind, bits))
    if name is None:
        raise UnsupportedQuantError(f"KV cache scheme {kind}{bits} is not supported")
    return name


def _ct_method(weights: Mapping[str, Any], acts: Mapping[str, Any] | None, fmt: str) -> str:
    wtype, wbits = str(weights.get("type", "int")), int(weights.get("num_bits", 8))
    if wtype == "float" and wbits == 8:
        return "fp8"
    if wtype == "int" and fmt == "pack-quantized" and acts is None:
        return "ct-w4a16"
    if wtype == "int" and wbits == 8 and fmt in ("int-quantized", "naive-quantized"):
        return "w8a8"
    raise UnsupportedQuantError(
        f"compressed-tensors scheme {wtype}{wbits} weights with format {fmt!r} "
        f"and activations {dict(acts) if acts else None} is not supported"
    )


def _parse_ct(qc: Mapping[str, Any]) -> QuantConfig:
    groups = qc.get("config_groups") or {}
    if not groups:
        raise UnsupportedQuantError("compressed-tensors config has no config_groups")
    schemes = list(groups.values())
    keys = [{k: v for k, v in s.items() if k != "targets"} for s in schemes]
    if any(k != keys[0] for k in keys[1:]):
        raise UnsupportedQuantError("compressed-tensors with several different schemes")
    scheme = schemes[0]
    weights, acts = scheme.get("weights") or {}, scheme.get("input_activations")
    fmt = str(scheme.get("format") or qc.get("format") or "")
    if not weights:
        raise UnsupportedQuantError("compressed-tensors scheme without weight quantization")
    method = _ct_method(weights, acts, fmt)
    targets = tuple(t for s in schemes for t in (s.get("targets") or ("Linear",)))
    return QuantConfig(
        method=method,
        bits=int(weights.get("num_bits", 8)),
        group_size=_group(weights.get("group_size")),
        zero_point=not bool(weights.get("symmetric", True)),
        desc_act=weights.get("actorder") not in (None, False),
        checkpoint_format=fmt,
        weight_type=str(weights.get("type", "int")),
        weight_strategy=str(weights.get("strategy", "tensor")),
        act_bits=int(acts["num_bits"]) if acts else None,
        act_type=str(acts.get("type", "int")) if acts else None,
        act_dynamic=bool(acts.get("dynamic", True)) if acts else True,
        act_strategy=str(acts.get("strategy", "token")) if acts else None,
        ignore=tuple(qc.get("ignore") or ()),
        targets=targets,
        kv_cache_dtype=_kv_dtype(qc.get("kv_cache_scheme")),
    )


def _parse_qoq(qc: Mapping[str, Any]) -> QuantConfig:
    if int(qc.get("bits", 4)) != 4 or int(qc.get("act_bits", 8)) != 8:
        raise UnsupportedQuantError("qoq supports only 4-bit weights and 8-bit activations")
    kv = qc.get("kv_cache") or {}
    return QuantConfig(
        method="qoq",
        bits=4,
        group_size=_group(qc.get("group_size", 128)),
        zero_point=True,
        checkpoint_format="qoq",
        weight_type="int",
        weight_strategy="group",
        act_bits=8,
        act_type="int",
        act_dynamic=True,
        act_strategy="token",
        ignore=tuple(qc.get("ignore") or ()),
        kv_cache_dtype=kv.get("dtype"),
    )


def parse_quant_config(hf_config: Mapping[str, Any]) -> QuantConfig:
    """Read `quantization_config` (or `compression_config`) of a HF config dict."""
    qc = hf_config.get("quantization_config") or hf_config.get("compression_config")
    if not qc:
        return QuantConfig(method="none")
    method = str(qc.get("quant_method", "")).lower()
    parsers = {
        "awq": _parse_awq,
        "gptq": _parse_gptq,
        "compressed-tensors": _parse_ct,
        "qoq": _parse_qoq,
    }
    if method not in parsers:
        raise UnsupportedQuantError(
            f"quantization method {method!r} is not supported "
            f"(supported: awq, gptq, compressed-tensors, qoq)"
        )
    return parsers[method](qc)


def _matches(pattern: str, prefix: str) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], prefix) is not None
    return prefix == pattern or prefix.endswith("." + pattern)


def is_quantized(qcfg: QuantConfig, prefix: str) -> bool:
    """Whether the linear layer at `prefix` is stored quantized under `qcfg`.

    False for method "none", for lm_head and embeddings, for modules in `ignore` or
    `not_convert`, and for modules no compressed-tensors target selects.
    """
    if qcfg.method == "none":
        return False
    leaf = prefix.rsplit(".", 1)[-1]
    if leaf == "lm_head" or "embed" in leaf:
        return False
    if any(_matches(p, prefix) for p in qcfg.ignore):
        return False
    if any(s in prefix for s in qcfg.not_convert):
        return False
    pattern_targets = [t for t in qcfg.targets if t.startswith("re:") or "." in t]
    if "Linear" in qcfg.targets or not pattern_targets:
        return True
    return any(_matches(t, prefix) for t in pattern_targets)
