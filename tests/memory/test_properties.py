"""Property-based sequences of allocate / free / defragment over every scheme, with the
integrity invariants checked after every step."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fineserve.memory import DoubleFreeError, OutOfPagesError
from fineserve.memory.allocator import ModelKV
from fineserve.memory.defrag import apply_moves, plan_defrag
from fineserve.memory.registry import SCHEMES, make_allocator
from fineserve.memory.slab import SlabAllocator

MODEL_NAMES = ["fp16", "fp8", "int4", "deep"]
op = st.one_of(
    st.tuples(st.just("alloc"), st.sampled_from(MODEL_NAMES), st.integers(0, 12)),
    st.tuples(st.just("free"), st.sampled_from(MODEL_NAMES), st.integers(0, 1000)),
    st.tuples(st.just("double_free"), st.sampled_from(MODEL_NAMES), st.integers(0, 1000)),
    st.tuples(st.just("defrag"), st.just(""), st.integers(1, 50)),
)


def snapshot(alloc) -> dict:
    return {m: alloc.owned_pages(m) for m in alloc.model_names}


def run_ops(scheme: str, ops: list, arena: int, reserve: str | None, models: list[ModelKV]) -> None:
    models = list(models)
    assert [m.name for m in models] == MODEL_NAMES
    if reserve is not None:
        from dataclasses import replace

        i = MODEL_NAMES.index(reserve)
        models[i] = replace(models[i], reserve_bytes=arena // 8)
    options = {"chunk_bytes": 256} if scheme == "paged_vmm" else {}
    alloc = make_allocator(scheme, arena, models, **options)
    held: dict[str, list[int]] = {m: [] for m in MODEL_NAMES}
    for kind, model, k in ops:
        if kind == "alloc":
            before = snapshot(alloc)
            try:
                held[model] += alloc.allocate(model, k)
            except OutOfPagesError:
                assert snapshot(alloc) == before
        elif kind == "free" and held[model]:
            cut = k % (len(held[model]) + 1)
            alloc.free(model, held[model][:cut])
            held[model] = held[model][cut:]
        elif kind == "double_free" and held[model]:
            before = snapshot(alloc)
            page = held[model][k % len(held[model])]
            try:
                alloc.free(model, [page, page])
            except DoubleFreeError:
                assert snapshot(alloc) == before
            else:
                raise AssertionError("freeing a page twice in one call was accepted")
        elif kind == "defrag" and isinstance(alloc, SlabAllocator):
            moves = plan_defrag(alloc, max_moves=k)
            assert len(moves) <= k
            sources = {
                (id(alloc.model_pool(mv.model)), alloc.model_pool(mv.model).page_unit[mv.src])
                for mv in moves
            }
            apply_moves(alloc, moves)
            for pool_id, unit in sources:  # every source slab empties (kept spare or returned)
                pool = next(
                    alloc.model_pool(m) for m in MODEL_NAMES if id(alloc.model_pool(m)) == pool_id
                )
                assert pool.used.get(unit, 0) == 0, f"defrag left live pages in source slab {unit}"
            for mv in moves:
                pages = held[mv.model]
                pages[pages.index(mv.src)] = mv.dst
        alloc.check_integrity()
        for m in MODEL_NAMES:
            assert alloc.owned_pages(m) == set(held[m])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    scheme=st.sampled_from(sorted(SCHEMES)),
    ops=st.lists(op, max_size=60),
    arena_kib=st.integers(8, 64),
    reserve=st.sampled_from([None, "fp8", "deep"]),
)
def test_random_operation_sequences_keep_integrity(
    scheme: str, ops: list, arena_kib: int, reserve: str | None, models: list[ModelKV]
) -> None:
    run_ops(scheme, ops, arena_kib * 1024 + 123, reserve, models)
