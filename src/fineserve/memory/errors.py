"""Errors raised by the KV memory layer. Every one leaves the allocator unchanged."""

from __future__ import annotations


class KVMemoryError(Exception):
    """Base class of KV memory errors."""


class InvalidFormatError(KVMemoryError, ValueError):
    """A KV format or allocator configuration that cannot describe real memory."""


class UnknownModelError(KVMemoryError, KeyError):
    """A model name the allocator was not given."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"


class OutOfPagesError(KVMemoryError):
    """Not enough free KV memory for the request right now (nothing was allocated)."""

    def __init__(self, model: str, requested: int, available: int) -> None:
        super().__init__(
            f"model {model!r} asked for {requested} KV pages but only {available} can be given now"
        )
        self.model = model
        self.requested = requested
        self.available = available


class DoubleFreeError(KVMemoryError):
    """A page freed that the model does not hold (already free, or someone else's)."""
