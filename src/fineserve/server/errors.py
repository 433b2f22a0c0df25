"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right status.

| status | type                  | when                                             |
| 400    | invalid_request_error | bad JSON, bad field, unsupported option          |
| 401    | authentication_error  | missing or wrong API key                         |
| 404    | not_found_error       | unknown model or route                           |
| 413    | invalid_request_error | body too large, prompt longer than the context   |
| 429    | rate_limit_error      | a model's queue is full (Retry-After set)        |
| 503    | service_unavailable   | shutting down, no live replica, replica lost     |
| 500    | server_error          | the engine failed                                |
"""

from __future__ import annotations

import math
from typing import Any

from fineserve.server.backend import BackendError

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error answered as JSON with `status`; `retry_after_s` adds a Retry-After header."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}

    @classmethod
    def from_backend(cls, exc: BackendError, param: str | None = None) -> APIError:
        return cls(
            exc.status,
            str(exc),
            param=param
            if exc.kind in ("invalid", "too_large")
            else "model"
            if exc.kind == "unknown_model"
            else None,
            code=exc.code,
            retry_after_s=exc.retry_after_s,
        )


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error object for `status`."""
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
