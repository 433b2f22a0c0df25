"""Response bodies of completions and chat completions, whole and as SSE chunks.

Invariants: every chunk of one request carries the same `id`, `created` and `model`; when
usage is asked for in a stream, every chunk has `"usage": null` except the last, which has no
choices and the usage; the stream ends with `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fineserve.server.backend import TokenLogprob
from fineserve.server.codec import TextCodec


@dataclass
class Envelope:
    """Identity of one response: id, kind ("text_completion" / "chat.completion"), model."""

    id: str
    object: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    def head(self, object_name: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": object_name or self.object,
            "created": self.created,
            "model": self.model,
        }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def completion_logprobs(
    codec: TextCodec, lps: Sequence[TokenLogprob], offset: int
) -> dict[str, Any]:
    """Legacy completions logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens = [codec.token_text(lp.token_id) for lp in lps]
    offsets, pos = [], offset
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [{codec.token_text(k): v for k, v in lp.top.items()} for lp in lps],
        "text_offset": offsets,
    }


def _entry(codec: TextCodec, token_id: int, logprob: float) -> dict[str, Any]:
    text = codec.token_text(token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def chat_logprobs(codec: TextCodec, lps: Sequence[TokenLogprob], top_n: int) -> dict[str, Any]:
    """Chat logprobs: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}."""
    content = []
    for lp in lps:
        entry = _entry(codec, lp.token_id, lp.logprob)
        tops = sorted(lp.top.items(), key=lambda kv: -kv[1])[:top_n]
        entry["top_logprobs"] = [_entry(codec, k, v) for k, v in tops]
        content.append(entry)
    return {"content": content}
