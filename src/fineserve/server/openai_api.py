"""Handlers of `/v1/completions` and `/v1/chat/completions` over a `Backend`.

A request is tokenized here (chat template for chat), checked against the model's context,
submitted, and answered whole or as SSE. For a stream the first piece is awaited before the
response starts, so an error before the first token still gets its real status code. Whatever
way a stream ends (done, stop string, client gone, server stopping), the backend stream is
closed, which aborts an unfinished request and frees its pages, and the request is counted in
the metrics exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from fineserve.server.backend import Backend, BackendError, GenerateRequest, ModelInfo
from fineserve.server.codec import TemplateError
from fineserve.server.errors import APIError
from fineserve.server.generation import (
    Piece,
    TextGeneration,
    check_prompt,
    new_request_id,
    sampling_options,
)
from fineserve.server.metrics import ServerMetrics
from fineserve.server.protocol import ChatCompletionRequest, CompletionRequest
from fineserve.server.responses import (
    Envelope,
    chat_logprobs,
    completion_logprobs,
    sse,
    usage,
)


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that always runs `on_close` when it ends (client gone included),
    even if its body was never iterated."""

    def __init__(
        self, body: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]], **kw: Any
    ) -> None:
        super().__init__(body, **kw)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.on_close()


def _prompt_ids(info: ModelInfo, prompt: Any) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
        raise APIError(400, "only one prompt per request is supported", param="prompt")
    if isinstance(prompt, str):
        try:
            return info.codec.encode(prompt)
        except ValueError as exc:
            raise APIError(400, str(exc), param="prompt") from None
    return [int(t) for t in prompt]


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > 4 or any(not s for s in stops):
        raise APIError(400, "stop takes up to 4 non-empty strings", param="stop")
    return stops


class OpenAIService:
    """The API's request handling (see the module docstring)."""

    def __init__(self, backend: Backend, metrics: ServerMetrics) -> None:
        self.backend = backend
        self.metrics = metrics
        self.models = {m.name: m for m in backend.models()}

    def info(self, name: str) -> ModelInfo:
        info = self.models.get(name)
        if info is None:
            raise APIError(404, f"the model {name!r} does not exist", param="model",
                           code="model_not_found")  # fmt: skip
        return info

    async def completions(self, req: CompletionRequest) -> Response:
        info = self.info(req.model)
        if req.echo:
            raise APIError(400, "echo is not supported", param="echo")
        if req.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        ids = _prompt_ids(info, req.prompt)
        gen = self._start(info, ids, req, req.max_tokens, req.logprobs, "cmpl")
        env = Envelope(gen.request_id, "text_completion", info.name)
        offset = [0]

        def choice(p: Piece, final: bool) -> dict[str, Any]:
            lp = None
            if req.logprobs is not None:
                lp = completion_logprobs(info.codec, p.logprobs, offset[0])
            offset[0] += len(p.text)
            return {"index": 0, "text": p.text, "logprobs": lp, "finish_reason": p.finish_reason}

        return await self._respond(gen, env, req.stream, req.stream_options, choice, None)

    async def chat(self, req: ChatCompletionRequest) -> Response:
        info = self.info(req.model)
        try:
            ids = info.codec.encode_chat(req.template_messages())
        except (TemplateError, ValueError) as exc:
            raise APIError(400, str(exc), param="messages") from None
        top = req.top_logprobs if req.logprobs else None
        if req.top_logprobs and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        want = (top or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens or req.max_tokens
        gen = self._start(info, ids, req, max_tokens, want, "chatcmpl")
        env = Envelope(gen.request_id, "chat.completion", info.name)

        def choice(p: Piece, final: bool) -> dict[str, Any]:
            lp = chat_logprobs(info.codec, p.logprobs, top or 0) if req.logprobs else None
            key = "message" if final else "delta"
            body = {"role": "assistant", "content": p.text}
            return {"index": 0, key: body, "logprobs": lp, "finish_reason": p.finish_reason}

        return await self._respond(gen, env, req.stream, req.stream_options, choice, "chunk")

    def _start(
        self,
        info: ModelInfo,
        ids: list[int],
        req: CompletionRequest | ChatCompletionRequest,
        max_tokens: int | None,
        logprobs: int | None,
        prefix: str,
    ) -> TextGeneration:
        check_prompt(info, ids)
        options = sampling_options(
            max_tokens=max_tokens,
            room=info.max_model_len - len(ids),
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=req.seed,
            logprobs=logprobs,
            ignore_eos=req.ignore_eos,
            stop_token_ids=req.stop_token_ids,
        )
        stops = _stops(req.stop)
        rid = new_request_id(prefix)
        try:
            deltas = self.backend.generate(GenerateRequest(rid, info.name, tuple(ids), options))
        except BackendError as exc:
            raise APIError.from_backend(exc, param="prompt") from None
        return TextGeneration(self.backend, info, rid, deltas, stops, len(ids))

    async def _respond(
        self,
        gen: TextGeneration,
        env: Envelope,
        stream: bool | None,
        stream_options: Any,
        choice: Callable[[Piece, bool], dict[str, Any]],
        chunk_suffix: str | None,
    ) -> Response:
        pieces = gen.pieces()

        async def close() -> None:
            await pieces.aclose()  # type: ignore[attr-defined]
            self.metrics.observe(gen)

        try:
            first = await anext(pieces, None)
        except BaseException:
            await close()
            raise
        if not stream:
            return await self._whole(gen, env, pieces, first, choice)
        include = bool(stream_options and stream_options.include_usage)
        body = self._stream(gen, env, pieces, first, choice, chunk_suffix, include)
        return ClosingStreamingResponse(body, close, media_type="text/event-stream")

    async def _whole(
        self,
        gen: TextGeneration,
        env: Envelope,
        pieces: AsyncIterator[Piece],
        first: Piece | None,
        choice: Callable[[Piece, bool], dict[str, Any]],
    ) -> Response:
        try:
            got = [] if first is None else [first]
            got += [p async for p in pieces]
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]
            self.metrics.observe(gen)
        merged = Piece(
            "".join(p.text for p in got),
            tuple(t for p in got for t in p.token_ids),
            tuple(lp for p in got for lp in p.logprobs),
            gen.finish_reason or "stop",
        )
        body = env.head()
        body["choices"] = [choice(merged, True)]
        body["usage"] = usage(gen.prompt_tokens, gen.completion_tokens)
        return JSONResponse(body)

    async def _stream(
        self,
        gen: TextGeneration,
        env: Envelope,
        pieces: AsyncIterator[Piece],
        first: Piece | None,
        choice: Callable[[Piece, bool], dict[str, Any]],
        chunk_suffix: str | None,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        kind = f"{env.object}.{chunk_suffix}" if chunk_suffix else env.object
        try:
            if chunk_suffix:  # chat: the first chunk announces the role
                head = env.head(kind)
                head["choices"] = [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None}]  # fmt: skip
                yield sse(_with_usage(head, include_usage))
            if first is not None:
                yield sse(self._chunk(env, kind, choice, first, include_usage, chunk_suffix))
            async for piece in pieces:
                yield sse(self._chunk(env, kind, choice, piece, include_usage, chunk_suffix))
            if include_usage:
                tail = env.head(kind)
                tail["choices"] = []
                tail["usage"] = usage(gen.prompt_tokens, gen.completion_tokens)
                yield sse(tail)
            yield sse("[DONE]")
        except APIError as exc:
            yield sse(exc.body())
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]
            self.metrics.observe(gen)

    @staticmethod
    def _chunk(
        env: Envelope,
        kind: str,
        choice: Callable[[Piece, bool], dict[str, Any]],
        piece: Piece,
        include_usage: bool,
        chunk_suffix: str | None,
    ) -> dict[str, Any]:
        body = env.head(kind)
        c = choice(piece, False)
        if chunk_suffix:
            c["delta"] = {"content": piece.text} if piece.text else {}
        body["choices"] = [c]
        return _with_usage(body, include_usage)


def _with_usage(body: dict[str, Any], include_usage: bool) -> dict[str, Any]:
    if include_usage:
        body["usage"] = None
    return body
