from __future__ import annotations

import pytest

from fineserve.memory import DoubleFreeError, KVDtype, KVFormat, OutOfPagesError
from fineserve.memory.accounting import account
from fineserve.memory.allocator import ModelKV
from fineserve.memory.slab import SlabAllocator
from fineserve.memory.slab_size import choose_slab_bytes, edge_fraction, pages_in_slab

MIB = 1024 * 1024


def state(alloc: SlabAllocator) -> tuple:
    return (
        {m: alloc.owned_pages(m) for m in alloc.model_names},
        alloc.free_slab_count,
        {m: alloc.slabs_of(m) for m in alloc.model_names},
    )


def test_slab_is_lcm_of_page_sizes_when_small() -> None:
    # 2 MiB, 1 MiB and 544 KiB pages: lcm = 34 MiB, no slab edge at all
    assert choose_slab_bytes([2 * MIB, MIB, 544 * 1024], 10 * 1024 * MIB) == 34 * MIB
    assert edge_fraction(34 * MIB, 34 * MIB * 10, 544 * 1024) == 0.0


def test_slab_for_awkward_sizes_keeps_edge_within_budget() -> None:
    sizes = [1_000_003, 999_983]  # coprime: the lcm is far larger than the arena
    arena = 4 * 1024 * MIB
    slab = choose_slab_bytes(sizes, arena)
    assert arena // slab >= 16
    assert max(edge_fraction(slab, arena, p) for p in sizes) <= 0.005


def test_pages_in_slab_lie_wholly_inside() -> None:
    slab, arena, page = 1000, 3500, 300
    for s in range(4):
        for p in pages_in_slab(s, slab, arena, page):
            assert s * slab <= p * page and (p + 1) * page <= min((s + 1) * slab, arena)


def test_allocation_fills_fullest_slab_first_and_returns_empty_slabs() -> None:
    fmt = KVFormat(1, 1, 16, KVDtype.FP16, 4)  # 256-byte pages
    alloc = SlabAllocator(16 * 1024, [ModelKV("m", fmt)], slab_bytes=1024, keep_empty=0)
    pages = alloc.allocate("m", 8)  # two full slabs
    assert len(alloc.slabs_of("m")) == 2
    alloc.free("m", pages[:3])  # first slab keeps one page, second is full
    assert len(alloc.slabs_of("m")) == 2
    new = alloc.allocate("m", 3)  # must refill the partly used first slab, not borrow
    assert {p * 256 // 1024 for p in new} == {pages[0] * 256 // 1024}
    alloc.free("m", new + pages[3:4])
    alloc.free("m", pages[4:])
    assert alloc.slabs_of("m") == [] and alloc.free_slab_count == 16
    alloc.check_integrity()


def test_hysteresis_keeps_one_empty_slab_but_others_can_reclaim_it() -> None:
    a, b = KVFormat(1, 1, 16, KVDtype.FP16, 4), KVFormat(1, 1, 16, KVDtype.FP8, 4)
    alloc = SlabAllocator(2048, [ModelKV("a", a), ModelKV("b", b)], slab_bytes=1024)
    pages = alloc.allocate("a", 8)  # the whole arena
    alloc.free("a", pages[4:])  # one slab empties: kept by a (hysteresis)
    assert len(alloc.slabs_of("a")) == 2
    got = alloc.allocate("b", 8)  # b reclaims the empty slab: 1024 B of 128 B pages
    assert len(got) == 8 and len(alloc.slabs_of("a")) == 1
    alloc.check_integrity()


def test_models_with_different_layer_counts_share_one_arena(models: list[ModelKV]) -> None:
    alloc = SlabAllocator(64 * 1024, models, share_same_size=False)
    for m in models:
        alloc.allocate(m.name, 5)
    alloc.check_integrity()
    slabs = [set(alloc.slabs_of(m.name)) for m in models]
    assert all(not (x & y) for i, x in enumerate(slabs) for y in slabs[i + 1 :])


def test_same_size_pages_share_slabs_but_never_pages(models: list[ModelKV]) -> None:
    # "fp16" (4 layers x 2 heads) and "deep" (8 layers x 1 head) both have 1024-byte pages
    alloc = SlabAllocator(64 * 1024, models, slab_bytes=3 * 1024)
    a = alloc.allocate("fp16", 2)
    b = alloc.allocate("deep", 1)
    assert alloc.slabs_of("fp16") == alloc.slabs_of("deep")  # one slab serves both
    assert not set(a) & set(b)
    assert alloc.slabs_of("fp8") == [] and alloc.slabs_of("int4") == []
    alloc.allocate("fp8", 1)
    assert not set(alloc.slabs_of("fp8")) & set(alloc.slabs_of("fp16"))
    alloc.free("deep", b)
    with pytest.raises(DoubleFreeError):
        alloc.free("deep", a[:1])  # fp16's page, in the shared slab
    alloc.check_integrity()


def test_out_of_pages_leaves_allocator_unchanged(models: list[ModelKV]) -> None:
    alloc = SlabAllocator(16 * 1024, models)
    alloc.allocate("fp16", 3)
    before = state(alloc)
    with pytest.raises(OutOfPagesError) as info:
        alloc.allocate("fp8", 10_000)
    assert info.value.requested == 10_000
    assert state(alloc) == before
    alloc.check_integrity()


def test_double_free_and_foreign_free_raise_and_change_nothing(models: list[ModelKV]) -> None:
    alloc = SlabAllocator(16 * 1024, models)
    pages = alloc.allocate("fp16", 4)
    alloc.free("fp16", pages[:1])
    before = state(alloc)
    with pytest.raises(DoubleFreeError):
        alloc.free("fp16", [pages[1], pages[0]])  # pages[0] is already free
    with pytest.raises(DoubleFreeError):
        alloc.free("fp16", [pages[2], pages[2]])
    with pytest.raises(DoubleFreeError):
        alloc.free("fp8", pages[1:2])  # not fp8's page
    assert state(alloc) == before


def test_unknown_model_raises_key_error(models: list[ModelKV]) -> None:
    alloc = SlabAllocator(16 * 1024, models)
    with pytest.raises(KeyError, match="nope"):
        alloc.allocate("nope", 1)


def test_reserve_is_never_starved() -> None:
    fmt = KVFormat(1, 1, 16, KVDtype.FP16, 4)
    greedy, small = ModelKV("greedy", fmt), ModelKV("small", fmt, reserve_bytes=2048)
    alloc = SlabAllocator(8 * 1024, [greedy, small], slab_bytes=1024)
    taken = 0
    with pytest.raises(OutOfPagesError):
        while True:
            alloc.allocate("greedy", 1)
            taken += 1
    assert taken == 6 * 4  # 6 of 8 slabs: two stay for the reserve
    assert len(alloc.allocate("small", 8)) == 8
    alloc.check_integrity()


def test_reserve_of_a_same_size_sibling_is_never_starved() -> None:
    a, b = KVFormat(1, 1, 16, KVDtype.FP16, 4), KVFormat(1, 2, 8, KVDtype.FP16, 4)  # both 256 B
    greedy, small = ModelKV("greedy", a), ModelKV("small", b, reserve_bytes=2048)
    alloc = SlabAllocator(8 * 1024, [greedy, small], slab_bytes=1024)
    assert alloc.pool_models("greedy") == ["greedy", "small"]
    with pytest.raises(OutOfPagesError):
        alloc.allocate("greedy", 25)
    assert len(alloc.allocate("greedy", 24)) == 24  # 8 of the 32 pages stay for the reserve
    assert alloc.available_pages("greedy") == 0
    assert len(alloc.allocate("small", 8)) == 8
    alloc.check_integrity()


def test_accounting_adds_up_and_counts_tail_and_stranded() -> None:
    fmt = KVFormat(1, 1, 16, KVDtype.FP16, 4)  # 64 B per token, 256 B per page
    alloc = SlabAllocator(4096, [ModelKV("m", fmt)], slab_bytes=1024, keep_empty=0)
    pages = alloc.allocate("m", 6)  # slab 0 full, slab 1 half used
    acc = account(alloc.usage(), {"m": 21})  # 21 tokens in 6 pages of 4
    assert acc.live_bytes == 21 * 64
    assert acc.tail_bytes == 6 * 256 - 21 * 64
    assert acc.stranded_bytes == 2 * 256
    assert acc.free_bytes == 2 * 1024
    assert acc.total == 4096
    alloc.free("m", pages)
    assert account(alloc.usage()).free_bytes == 4096
