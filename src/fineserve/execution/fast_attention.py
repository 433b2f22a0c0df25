"""`CpuFastBackend` ("cpu"): the reference's semantics with less work per layer.

What it does differently from `TorchReferenceBackend` (same results up to float rounding,
tested against it):

* Per-step plans: everything that depends only on the step (page tables, the float additive
  masks, the flat indices of key slots past each context, query padding/scatter indices) is
  built once per step, on the first layer, and cached on the `AttentionMetadata`; later
  layers only gather, attend and scatter.
* Float additive masks (0 / -inf) instead of boolean ones: SDPA's CPU kernel is faster with
  them.
* Batched prefill: prefill sequences are grouped (sorted by length, a group is cut where
  padding would more than double its work) and each group runs as one gather and one SDPA
  call over padded queries, instead of one call per sequence. A padded query row sits at
  position 0 and sees key 0 only (never an all-masked row, so no NaN is produced), and its
  output is dropped.

Stale bytes: slots past a context (the rest of the last page, padding pages) are zeroed in the
gathered K/V before attention, exactly like the reference: whatever those bytes decode to
(NaN/inf from another model's pages) never reaches the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional

from fineserve.execution.attention import AttentionBackend, _clean
from fineserve.execution.batch import AttentionMetadata
from fineserve.execution.kv_views import LayerKV

_NEG_INF = float("-inf")


@dataclass
class _DecodePlan:
    invalid: torch.Tensor  # flat [Bd * L] slot indices past each context
    bias: torch.Tensor  # float [Bd, 1, 1, L]


@dataclass
class _PrefillGroup:
    page_table: torch.Tensor  # [S, P]
    q_rows: torch.Tensor  # [S * Q] row of q for each padded query (padding: any valid row)
    out_rows: torch.Tensor  # [n] rows of the output that this group writes
    src: torch.Tensor  # [n] index into the padded [S * Q] queries for each out row
    invalid: torch.Tensor  # flat [S * L] key slots past each context
    bias: torch.Tensor  # float [S, 1, Q, L]
    num_queries: int  # Q


class CpuFastBackend(AttentionBackend):
    """Decode batched over pages, prefills batched in groups, per-step plans cached."""

    name = "cpu"

    def __init__(self, max_padding_factor: float = 2.0) -> None:
        self.max_padding_factor = max_padding_factor

    def forward(
        self,
        q: torch.Tensor,
        kv: LayerKV,
        meta: AttentionMetadata,
        scale: float,
        window: int | None,
    ) -> torch.Tensor:
        dec = meta.decode
        only_decode = dec is not None and dec.rows is None and not meta.prefills
        out = None if only_decode else torch.empty_like(q)
        if dec is not None:
            plan = self._decode_plan(meta, window)
            k, v = _clean(*kv.gather(dec.page_table, q.dtype), plan.invalid)
            qd = q if dec.rows is None else q.index_select(0, dec.rows)
            bd, hq, d = qd.shape
            hkv = k.shape[2]
            # GQA without repeating K/V: a KV head's G query heads act as G query rows.
            o = _attend(qd.reshape(bd, hkv, hq // hkv, d), k, v, plan.bias, scale)
            o = o.reshape(bd, hq, d)
            if out is None:
                return o
            if dec.rows is None:
                out[: o.shape[0]] = o
            else:
                out.index_copy_(0, dec.rows, o)
        assert out is not None
        for group in self._prefill_plan(meta, window):
            k, v = _clean(*kv.gather(group.page_table, q.dtype), group.invalid)
            s = group.page_table.shape[0]
            qs = q.index_select(0, group.q_rows)  # [S * Q, Hq, D]
            qs = qs.reshape(s, group.num_queries, *q.shape[1:]).transpose(1, 2)
            o = _attend(qs, k, v, group.bias, scale)  # [S, Hq, Q, D]
            o = o.transpose(1, 2).reshape(-1, *q.shape[1:])
            out.index_copy_(0, group.out_rows, o.index_select(0, group.src))
        return out

    def _decode_plan(self, meta: AttentionMetadata, window: int | None) -> _DecodePlan:
        key = ("cpu-decode", window)
        plan = meta.plans.get(key)
        if plan is None:
            dec = meta.decode
            assert dec is not None
            length = dec.page_table.shape[1] * meta.tokens_per_page
            kpos = torch.arange(length)[None, :]
            ctx = dec.context_lens[:, None]
            visible = kpos < ctx
            if window is not None:
                visible &= kpos > ctx - 1 - window
            plan = _DecodePlan(
                invalid=meta.decode_invalid(),
                bias=_bias(visible)[:, None, None, :],
            )
            meta.plans[key] = plan
        return plan  # type: ignore[no-any-return]

    def _prefill_plan(self, meta: AttentionMetadata, window: int | None) -> list[_PrefillGroup]:
        if not meta.prefills:
            return []
        key = ("cpu-prefill", window)
        plan = meta.plans.get(key)
        if plan is None:
            plan = [
                _prefill_group(meta, members, window)
                for members in _group_prefills(meta, self.max_padding_factor)
            ]
            meta.plans[key] = plan
        return plan  # type: ignore[no-any-return]


def _bias(visible: torch.Tensor) -> torch.Tensor:
    return torch.zeros(visible.shape, dtype=torch.float32).masked_fill_(~visible, _NEG_INF)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float
) -> torch.Tensor:
    """q [B, Hq, q, D]; k, v [B, L, Hkv, D]; float bias broadcastable to [B, Hq, q, L]."""
    if bias.dtype != q.dtype:
        bias = bias.to(q.dtype)
    return functional.scaled_dot_product_attention(
        q,
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=bias,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[2],
    )


def _group_prefills(meta: AttentionMetadata, factor: float) -> list[list[int]]:
    """Prefill indices grouped so a group's padded work is at most `factor` x its real work."""
    tpp = meta.tokens_per_page
    seqs = meta.prefills

    def dims(i: int) -> tuple[int, int]:
        return seqs[i].end - seqs[i].start, seqs[i].page_table.shape[1] * tpp

    order = sorted(range(len(seqs)), key=dims)
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    max_q = max_l = 0
    for i in order:
        q, length = dims(i)
        nq, nl, nreal = max(max_q, q), max(max_l, length), real + q * length
        if current and nq * nl * (len(current) + 1) > factor * nreal:
            groups.append(current)
            current, real, max_q, max_l = [], 0, 0, 0
            nq, nl, nreal = q, length, q * length
        current.append(i)
        real, max_q, max_l = nreal, nq, nl
    groups.append(current)
    return groups


def _prefill_group(
    meta: AttentionMetadata, members: list[int], window: int | None
) -> _PrefillGroup:
    seqs = [meta.prefills[i] for i in members]
    tpp = meta.tokens_per_page
    s = len(seqs)
    num_q = max(p.end - p.start for p in seqs)
    num_p = max(p.page_table.shape[1] for p in seqs)
    length = num_p * tpp
    table = torch.zeros(s, num_p, dtype=torch.long)
    q_rows = torch.empty(s, num_q, dtype=torch.long)
    qpos = torch.zeros(s, num_q, dtype=torch.long)
    ctx = torch.empty(s, 1, dtype=torch.long)
    out_rows, src = [], []
    for j, p in enumerate(seqs):
        n = p.end - p.start
        table[j, : p.page_table.shape[1]] = p.page_table[0]
        q_rows[j] = p.start
        q_rows[j, :n] = torch.arange(p.start, p.end)
        qpos[j, :n] = p.positions
        ctx[j, 0] = p.context_len
        out_rows.append(torch.arange(p.start, p.end))
        src.append(torch.arange(j * num_q, j * num_q + n))
    kpos = torch.arange(length)[None, None, :]
    visible = kpos <= qpos[:, :, None]  # padded queries: position 0, key 0 only
    if window is not None:
        visible &= kpos > qpos[:, :, None] - window
    invalid = (torch.arange(length)[None, :] >= ctx).reshape(-1).nonzero().reshape(-1)
    return _PrefillGroup(
        page_table=table,
        q_rows=q_rows.reshape(-1),
        out_rows=torch.cat(out_rows),
        src=torch.cat(src),
        invalid=invalid,
        bias=_bias(visible)[:, None],
        num_queries=num_q,
    )
