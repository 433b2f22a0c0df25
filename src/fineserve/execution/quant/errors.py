"""Errors raised while reading quantized checkpoints."""

from __future__ import annotations


class UnsupportedQuantError(ValueError):
    """The checkpoint asks for a quantization method or scheme FineServe cannot run."""


class MissingTensorError(KeyError):
    """A tensor a layer needs is absent from the checkpoint.

    `prefix` is the module (e.g. "model.layers.0.self_attn.q_proj") and `name` the full tensor
    name that was looked up; the message names both.
    """

    def __init__(self, prefix: str, name: str, source: str | None = None) -> None:
        self.prefix = prefix
        self.name = name
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"missing tensor {name!r} for module {prefix!r}{where}")

    def __str__(self) -> str:
        return str(self.args[0])
