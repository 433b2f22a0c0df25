"""The FastAPI application over a `Backend`.

Routes: `GET /health`, `GET /metrics` (Prometheus), `GET /v1/models`, `GET /v1/models/{name}`,
`POST /v1/completions`, `POST /v1/chat/completions`. With an API key set, every `/v1/` route
needs `Authorization: Bearer <key>` (401 otherwise); `/health` and `/metrics` stay open. Every
error, validation errors and unknown routes included, is OpenAI-shaped (see `errors.py`); no
request input leads to a 5xx unless the engine itself fails. The app starts the backend on
start-up and, on shutdown, refuses new requests and drains the ones in flight.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fineserve.server.backend import Backend, BackendError
from fineserve.server.errors import APIError, error_body
from fineserve.server.metrics import ServerMetrics
from fineserve.server.openai_api import OpenAIService
from fineserve.server.protocol import ChatCompletionRequest, CompletionRequest


@dataclass(frozen=True)
class AppConfig:
    """HTTP-level knobs. `api_key` None = open server."""

    api_key: str | None = None
    max_body_bytes: int = 4 << 20
    drain_timeout_s: float = 30.0


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes (declared or streamed)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise APIError(413, f"the request body exceeds {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(error_body(413, f"the request body exceeds {limit} bytes"), 413)


def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), exc.status, headers=exc.headers())


def _backend_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, BackendError)
    return _api_error(_, APIError.from_backend(exc))


def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    message = "; ".join(
        f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}"
        for e in errors[:5]
    )
    return JSONResponse(error_body(400, message or "invalid request", param), 400)


def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    message = "not found" if status == 404 else str(exc.detail)
    return JSONResponse(error_body(status, message), status, headers=exc.headers)


def _server_error(_: Request, exc: Exception) -> Response:
    return JSONResponse(error_body(500, f"internal error: {type(exc).__name__}"), 500)


def create_app(backend: Backend, config: AppConfig | None = None) -> FastAPI:
    """The app (see the module docstring); one app per backend."""
    cfg = config or AppConfig()
    metrics = ServerMetrics(backend.stats, list(backend.models()))
    service = OpenAIService(backend, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await backend.start()
        try:
            yield
        finally:
            await backend.stop(cfg.drain_timeout_s)

    app = FastAPI(title="FineServe", version="0.1.0", lifespan=lifespan)
    app.state.backend = backend
    app.state.metrics = metrics
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(BackendError, _backend_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    _routes(app, service, metrics, _auth(cfg.api_key))
    return app


def _auth(api_key: str | None) -> Any:
    async def check(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), api_key):
            raise APIError(401, "invalid or missing API key", code="invalid_api_key")

    return Depends(check)


def _model_card(name: str, max_len: int, created: int, owner: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owner,
            "max_model_len": max_len}  # fmt: skip


def _routes(app: FastAPI, service: OpenAIService, metrics: ServerMetrics, auth: Any) -> None:
    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", dependencies=[auth])
    async def list_models() -> dict[str, Any]:
        cards = [_model_card(m.name, m.max_model_len, m.created, m.owned_by)
                 for m in service.models.values()]  # fmt: skip
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{name:path}", dependencies=[auth])
    async def get_model(name: str) -> dict[str, Any]:
        m = service.info(name)
        return _model_card(m.name, m.max_model_len, m.created, m.owned_by)

    @app.post("/v1/completions", dependencies=[auth])
    async def completions(body: CompletionRequest) -> Response:
        return await service.completions(body)

    @app.post("/v1/chat/completions", dependencies=[auth])
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        return await service.chat(body)
