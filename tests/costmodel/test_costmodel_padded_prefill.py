"""CPU-table prefill attention counted as the CPU engine's padded batched prefill computes it.

Invariants: `padded_prefill_work` is the score entries of the engine's prefill groups (each
chunk padded to its group's longest query and longest key length in whole pages; a group cut
where padding would more than double its work); a table fitted with `padded_prefill` recovers
the coefficients of a profile made that way, prices uneven prompts in one step above the causal
pairs, and the H100 path (option off) still counts causal pairs.
"""

from __future__ import annotations

import json

import pytest

from fineserve.costmodel.base import BatchShape, InstanceKey
from fineserve.costmodel.fit import (
    StepCoeffs,
    fit_instance,
    padded_prefill_work,
    prefill_features,
)
from fineserve.costmodel.profile import ProfileRow
from fineserve.costmodel.table import TableCostModel, _coeffs_from_json, _coeffs_to_json

KEY = InstanceKey("cpu-model", "fp32")
A, B, C = 0.004, 1e-4, 2e-7  # prefill = A + B * tokens + C * padded score entries


def test_one_chunk_is_its_queries_times_its_pages() -> None:
    assert padded_prefill_work([(20, 0)], 16) == 20 * 32
    assert padded_prefill_work([(16, 0)], 16) == 16 * 16
    # a chunk after cached context attends to the whole context, rounded up to pages
    assert padded_prefill_work([(10, 40)], 16) == 10 * 64
    assert padded_prefill_work([], 16) == 0


def test_uneven_chunks_in_one_group_pad_to_the_longest() -> None:
    # 40 and 120 tokens: one group (padding at most doubles the work), both padded to 120 x 128
    assert padded_prefill_work([(40, 0), (120, 0)], 16) == 2 * 120 * 128
    assert padded_prefill_work([(120, 0), (40, 0)], 16) == 2 * 120 * 128
    # equal chunks: no padding beyond the page rounding
    assert padded_prefill_work([(64, 0)] * 3, 16) == 3 * 64 * 64


def test_a_group_is_cut_where_padding_would_more_than_double_it() -> None:
    # two short prompts then a long one: 3 x 250 x 256 > 2 x (2 x 16 x 16 + 250 x 256)
    work = padded_prefill_work([(16, 0), (16, 0), (250, 0)], 16)
    assert work == 2 * 16 * 16 + 250 * 256
    # the cap is the factor: with a factor of 3 they stay one group
    assert padded_prefill_work([(16, 0), (16, 0), (250, 0)], 16, factor=3.0) == 3 * 250 * 256


def test_work_grows_with_any_chunk() -> None:
    base = [(30, 0), (90, 0), (150, 0)]
    w = padded_prefill_work(base, 16)
    for i in range(len(base)):
        grown = list(base)
        grown[i] = (base[i][0] + 17, 0)
        assert padded_prefill_work(grown, 16) >= w


def _rows() -> list[ProfileRow]:
    rows = []
    for b in (1, 2, 4, 8):
        for n in (20, 50, 100, 200):
            work = b * n * (-(-n // 16) * 16)
            pre = A + B * b * n + C * work
            rows.append(ProfileRow(KEY, 100.0, b, n, 8, pre, pre, 0.003 + 1e-4 * b))
    return rows


def test_fit_recovers_the_coefficients_of_a_padded_profile() -> None:
    c = fit_instance(_rows(), padded_prefill=16)
    a, b, cp, g, _ = c.prefill
    assert c.prefill_page == 16
    assert (a, b, cp) == pytest.approx((A, B, C), rel=1e-6)
    assert g == pytest.approx(0.0, abs=1e-12)
    assert c.prefill_err_max < 1e-6
    # counted as causal pairs, the same profile is not reproduced exactly
    assert fit_instance(_rows()).prefill_err_max > 1e-3


def test_features_of_a_row_are_one_group() -> None:
    _, tokens, work, _ = prefill_features(4, 100, 0.0, 16)
    assert (tokens, work) == (400.0, float(padded_prefill_work([(100, 0)] * 4, 16)))
    assert prefill_features(4, 100, 0.0)[2] == 4 * 100 * 101 / 2


def test_table_prices_uneven_prompts_by_the_padded_work() -> None:
    table = TableCostModel({KEY: fit_instance(_rows(), padded_prefill=16)})
    uneven = BatchShape(prefill=((40, 0), (120, 0)))
    assert table.step_time(KEY, uneven) == pytest.approx(A + B * 160 + C * 2 * 120 * 128)
    # the same tokens in one prompt cost less attention than two uneven ones padded together
    single = BatchShape(prefill=((160, 0),))
    assert table.step_time(KEY, single) == pytest.approx(A + B * 160 + C * 160 * 160)


def test_option_off_counts_causal_pairs_and_round_trips() -> None:
    pairs = StepCoeffs((A, B, C, 0.0, 0.0), (0.003, 1e-4, 0.0))
    shape = BatchShape(prefill=((40, 0), (120, 0)))
    table = TableCostModel({KEY: pairs})
    assert table.step_time(KEY, shape) == pytest.approx(A + B * 160 + C * shape.attention_pairs)
    padded = fit_instance(_rows(), padded_prefill=16)
    back = _coeffs_from_json(json.loads(json.dumps(_coeffs_to_json(padded))))
    assert back.prefill_page == 16
    assert "prefill_page" not in _coeffs_to_json(pairs)
