"""Text <-> tokens for one model: its `tokenizer.json`, special tokens and chat template.

The chat template comes from the folder's `tokenizer_config.json` (`chat_template`, or a
`chat_template.jinja` file) and is rendered with a sandboxed Jinja2 environment, the way
transformers does it (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`). Invariant:
a rendered chat prompt is encoded without adding special tokens again (the template has them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class TemplateError(ValueError):
    """The chat template could not render these messages."""


def _special_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return str(value.get("content")) if value.get("content") is not None else None
    return None if value is None else str(value)


class TextCodec:
    """Encode/decode with a `tokenizers.Tokenizer` and render chat prompts (see module doc)."""

    def __init__(
        self, tokenizer: Any, chat_template: str | None, specials: Mapping[str, str | None]
    ) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.specials = dict(specials)
        self._template: Any = None

    @classmethod
    def from_folder(cls, folder: Path, tokenizer: Any = None) -> TextCodec:
        """Read the tokenizer (unless given) and its config from a Hugging Face folder."""
        folder = Path(folder)
        if tokenizer is None and (folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config: dict[str, Any] = {}
        if (folder / "tokenizer_config.json").is_file():
            config = json.loads((folder / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: take "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if template is None and (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        specials = {k: _special_content(config.get(k)) for k in ("bos_token", "eos_token")}
        return cls(tokenizer, template, specials)

    @property
    def has_tokenizer(self) -> bool:
        return self.tokenizer is not None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: send token ids as the prompt")
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int]) -> str:
        if self.tokenizer is None or not ids:
            return ""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def token_text(self, token_id: int) -> str:
        """The token's own surface form (for logprobs), '' if unknown."""
        if self.tokenizer is None:
            return ""
        piece = self.tokenizer.id_to_token(int(token_id))
        return self.decode([token_id]) if piece is None else self.decode([token_id]) or piece

    def render_chat(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The prompt text for `messages` with the generation prompt appended."""
        if self.chat_template is None:
            raise TemplateError("this model has no chat template; use /v1/completions")
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        if self._template is None:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

            def raise_exception(message: str) -> None:
                raise TemplateError(message)

            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        try:
            return str(
                self._template.render(
                    messages=list(messages),
                    add_generation_prompt=True,
                    bos_token=self.specials.get("bos_token") or "",
                    eos_token=self.specials.get("eos_token") or "",
                )
            )
        except jinja2.TemplateError as exc:
            raise TemplateError(f"chat template failed: {exc}") from exc

    def encode_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        return self.encode(self.render_chat(messages), add_special_tokens=False)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Invariant: the concatenation of every delta returned equals `decode(all ids)` minus any
    trailing incomplete UTF-8 character (held back until the next token completes it).
    """

    def __init__(self, codec: TextCodec) -> None:
        self.codec = codec
        self.ids: list[int] = []
        self.text = ""

    def push(self, token_ids: Sequence[int]) -> str:
        self.ids.extend(token_ids)
        full = self.codec.decode(self.ids)
        if full.endswith("\ufffd"):
            return ""
        if not full.startswith(self.text):  # a merge changed earlier text: emit nothing new
            delta = full[len(self.text) :] if len(full) > len(self.text) else ""
        else:
            delta = full[len(self.text) :]
        self.text += delta
        return delta
