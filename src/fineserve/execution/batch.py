"""Step inputs: what each sequence runs in one step, and the per-step attention metadata
derived from it (built once per step, shared by every layer).

Tokens of all sequences are flattened in chunk order: chunk i owns rows
`[row_start[i], row_start[i] + len(token_ids))`. A chunk with one new token and a non-empty
context is a decode; anything else (a prompt, or a later chunk of a long prompt) is a prefill
over a paged prefix.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fineserve.execution.sampling import SamplingParams


@dataclass(frozen=True)
class SeqChunk:
    """One sequence's work in a step.

    Invariants: `len(token_ids) >= 1`; `pages` (in order) cover at least
    `context_start + len(token_ids)` tokens; the first `context_start` tokens' KV is already in
    those pages. Positions of the new tokens are `context_start, context_start + 1, ...`.
    """

    seq_id: Hashable
    token_ids: Sequence[int]
    context_start: int
    pages: Sequence[int]
    sampling: SamplingParams | None = None  # None: sample nothing (a non-final prompt chunk)
    output_index: int = 0  # tokens the request generated before this step (seeded sampling)

    @property
    def context_len(self) -> int:
        return self.context_start + len(self.token_ids)


@dataclass
class DecodeGroup:
    rows: torch.Tensor | None  # [Bd] token rows of decode tokens; None: every row, in order
    page_table: torch.Tensor  # [Bd, P]
    context_lens: torch.Tensor  # [Bd]


@dataclass
class PrefillSeq:
    start: int
    end: int
    page_table: torch.Tensor  # [1, P]
    positions: torch.Tensor  # [q]
    context_len: int


@dataclass
class AttentionMetadata:
    """Per-step metadata. `last_rows[i]` is the row of chunk i's last token."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_pages: torch.Tensor
    slot_offsets: torch.Tensor
    last_rows: torch.Tensor
    decode: DecodeGroup | None
    prefills: list[PrefillSeq]
    tokens_per_page: int
    _masks: dict[tuple[int, int | None], torch.Tensor] = field(default_factory=dict)
    # Per-step plans of attention backends (built on the first layer, reused by the others).
    plans: dict[Hashable, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    def decode_mask(self, window: int | None) -> torch.Tensor:
        """Bool [Bd, 1, 1, L]: key j visible to the decode token of row b."""
        key = (-1, window)
        if key not in self._masks:
            assert self.decode is not None
            ctx = self.decode.context_lens[:, None]
            length = self.decode.page_table.shape[1] * self.tokens_per_page
            kpos = torch.arange(length)[None, :]
            mask = kpos < ctx
            if window is not None:
                mask &= kpos > ctx - 1 - window
            self._masks[key] = mask[:, None, None, :]
        return self._masks[key]

    def decode_invalid(self) -> torch.Tensor:
        """Flat indices into gathered [Bd * L] key slots past each context (hold any bytes)."""
        key = (-2, None)
        if key not in self._masks:
            assert self.decode is not None
            length = self.decode.page_table.shape[1] * self.tokens_per_page
            kpos = torch.arange(length)[None, :]
            invalid = kpos >= self.decode.context_lens[:, None]
            self._masks[key] = invalid.reshape(-1).nonzero().reshape(-1)
        return self._masks[key]

    def prefill_invalid(self, index: int) -> torch.Tensor:
        """Flat indices of gathered key slots past prefill sequence `index`'s context."""
        key = (-3 - index, None)
        if key not in self._masks:
            seq = self.prefills[index]
            kpos = torch.arange(seq.page_table.shape[1] * self.tokens_per_page)
            self._masks[key] = (kpos >= seq.context_len).nonzero().reshape(-1)
        return self._masks[key]

    def prefill_mask(self, index: int, window: int | None) -> torch.Tensor:
        """Bool [1, 1, q, L]: causal (and windowed) visibility for prefill sequence `index`."""
        key = (index, window)
        if key not in self._masks:
            seq = self.prefills[index]
            length = seq.page_table.shape[1] * self.tokens_per_page
            kpos = torch.arange(length)[None, :]
            qpos = seq.positions[:, None]
            mask = kpos <= qpos
            if window is not None:
                mask &= kpos > qpos - window
            self._masks[key] = mask[None, None]
        return self._masks[key]


def build_metadata(chunks: Sequence[SeqChunk], tokens_per_page: int) -> AttentionMetadata:
    """Flatten `chunks` into one varlen batch. Raises ValueError on inconsistent chunks."""
    if not chunks:
        raise ValueError("a step needs at least one sequence chunk")
    ids: list[int] = []
    positions: list[int] = []
    last_rows: list[int] = []
    decode_rows: list[int] = []
    decode_idx: list[int] = []
    prefill_idx: list[tuple[int, int]] = []
    for i, c in enumerate(chunks):
        n = len(c.token_ids)
        if n < 1 or c.context_start < 0:
            raise ValueError(f"sequence {c.seq_id!r}: empty chunk or negative context_start")
        if len(c.pages) * tokens_per_page < c.context_len:
            raise ValueError(
                f"sequence {c.seq_id!r}: {len(c.pages)} pages hold fewer than "
                f"{c.context_len} tokens"
            )
        row = len(ids)
        ids.extend(c.token_ids)
        positions.extend(range(c.context_start, c.context_len))
        last_rows.append(row + n - 1)
        if n == 1 and c.context_start > 0:
            decode_rows.append(row)
            decode_idx.append(i)
        else:
            prefill_idx.append((i, row))
    pos = torch.tensor(positions, dtype=torch.long)
    page_of_token = [
        c.pages[p // tokens_per_page] for c in chunks for p in range(c.context_start, c.context_len)
    ]
    return AttentionMetadata(
        input_ids=torch.tensor(ids, dtype=torch.long),
        positions=pos,
        slot_pages=torch.tensor(page_of_token, dtype=torch.long),
        slot_offsets=pos % tokens_per_page,
        last_rows=torch.tensor(last_rows, dtype=torch.long),
        decode=_decode_group(chunks, decode_idx, decode_rows, tokens_per_page),
        prefills=[_prefill(chunks[i], row, tokens_per_page) for i, row in prefill_idx],
        tokens_per_page=tokens_per_page,
    )


def _pages_needed(chunk: SeqChunk, tokens_per_page: int) -> int:
    return -(-chunk.context_len // tokens_per_page)


def _decode_group(
    chunks: Sequence[SeqChunk], idx: list[int], rows: list[int], tpp: int
) -> DecodeGroup | None:
    if not idx:
        return None
    width = max(_pages_needed(chunks[i], tpp) for i in idx)
    table = torch.zeros(len(idx), width, dtype=torch.long)
    for r, i in enumerate(idx):
        pages = list(chunks[i].pages[: _pages_needed(chunks[i], tpp)])
        table[r, : len(pages)] = torch.tensor(pages, dtype=torch.long)
    every_row = len(idx) == len(chunks)  # all chunks are decodes: rows are 0..Bd-1
    return DecodeGroup(
        rows=None if every_row else torch.tensor(rows, dtype=torch.long),
        page_table=table,
        context_lens=torch.tensor([chunks[i].context_len for i in idx], dtype=torch.long),
    )


def _prefill(chunk: SeqChunk, row: int, tpp: int) -> PrefillSeq:
    pages = list(chunk.pages[: _pages_needed(chunk, tpp)])
    return PrefillSeq(
        start=row,
        end=row + len(chunk.token_ids),
        page_table=torch.tensor([pages], dtype=torch.long),
        positions=torch.arange(chunk.context_start, chunk.context_len),
        context_len=chunk.context_len,
    )
