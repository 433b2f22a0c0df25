"""Train a small byte-level BPE tokenizer offline and save it as a Hugging Face tokenizer.

Invariants:
- Byte-level: every string (any Unicode) encodes, and decode(encode(s)) == s.
- Special tokens take the first ids, in `SPECIAL_TOKENS` order (`<pad>`=0, `<s>`=1, `</s>`=2,
  `<|im_start|>`=3, `<|im_end|>`=4); the vocabulary never exceeds the requested size.
- No BOS/EOS is added by `encode`; the chat template puts `<s>` at the start itself.
- Training is deterministic: same vocab size, same files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TokenizerInfo:
    """Ids of the special tokens of a trained tokenizer, and its real vocabulary size."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    im_start_id: int
    im_end_id: int


def train_tokenizer(vocab_size: int, n_lines: int = 4000) -> Any:
    """Train byte-level BPE on the built-in corpus; returns a `tokenizers.Tokenizer`.

    The result has at most `vocab_size` tokens (fewer if the corpus runs out of merges).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from fineserve.execution.tokenizer_corpus import corpus_lines

    min_size = 256 + len(SPECIAL_TOKENS)
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be at least {min_size} for byte-level BPE")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(n_lines), trainer=trainer)
    return tok


def tokenizer_info(tok: Any) -> TokenizerInfo:
    """Ids of the special tokens of `tok` (a `tokenizers.Tokenizer`)."""
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    if any(i is None for i in ids):
        raise ValueError("tokenizer lacks FineServe's special tokens")
    return TokenizerInfo(tok.get_vocab_size(), *ids)


def save_hf_tokenizer(tok: Any, out_dir: Path, model_max_length: int) -> TokenizerInfo:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    info = tokenizer_info(tok)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
        **specials,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    return info
