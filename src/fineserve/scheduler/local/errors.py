"""Errors of the local scheduler and engine front."""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """A request that can never be served as asked (unknown model, prompt too long,
    max_tokens < 1, duplicate id). Raised at submission; the engine keeps serving others."""
