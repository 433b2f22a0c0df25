from __future__ import annotations

from fineserve.memory import KVDtype, KVFormat
from fineserve.memory.allocator import ModelKV
from fineserve.memory.arbitration import (
    MemoryDemand,
    PreemptionCandidate,
    choose_victim,
    grant_order,
)
from fineserve.memory.defrag import apply_moves, plan_defrag, stranded_fraction
from fineserve.memory.slab import SlabAllocator

FMT = KVFormat(1, 1, 16, KVDtype.FP16, 4)  # 256-byte pages, 4 per 1 KiB slab


def test_defrag_empties_sparse_slabs_and_returns_them() -> None:
    alloc = SlabAllocator(8 * 1024, [ModelKV("m", FMT)], slab_bytes=1024, keep_empty=0)
    pages = alloc.allocate("m", 16)  # four full slabs
    # leave one live page in each of the four slabs
    alloc.free("m", [p for i, p in enumerate(pages) if i % 4])
    assert len(alloc.slabs_of("m")) == 4 and stranded_fraction(alloc) > 0
    moves = plan_defrag(alloc)
    assert len(moves) == 3  # three sparse slabs move into the fourth
    apply_moves(alloc, moves)
    assert len(alloc.slabs_of("m")) == 1 and stranded_fraction(alloc) == 0
    assert alloc.owned_pages("m") == {m.dst for m in moves} | (
        {pages[0], pages[4], pages[8], pages[12]} - {m.src for m in moves}
    )
    alloc.check_integrity()


def test_defrag_does_not_move_when_nothing_can_empty() -> None:
    alloc = SlabAllocator(8 * 1024, [ModelKV("m", FMT)], slab_bytes=1024, keep_empty=0)
    pages = alloc.allocate("m", 8)
    alloc.free("m", [pages[0], pages[4]])  # 3 live + 3 live, 1 free each: nothing can empty
    assert plan_defrag(alloc) == []


def test_defrag_plans_only_sources_it_can_empty_completely() -> None:
    alloc = SlabAllocator(8 * 1024, [ModelKV("m", FMT)], slab_bytes=1024, keep_empty=0)
    pages = alloc.allocate("m", 16)  # slabs 0..3, four pages each
    # live pages per slab: 1, 2, 3, 3 -> 3 + 2 + 1 + 1 = 7 free pages in partly used slabs
    alloc.free("m", pages[1:4] + pages[6:8] + pages[11:12] + pages[15:16])
    moves = plan_defrag(alloc)
    # slab 0 (1 live page) empties into the two free pages left in the fuller slabs; slab 1
    # (2 live pages) would need the 2 pages that slab 0's page has just taken, so it stays
    assert len(moves) == 1 and moves[0].src == pages[0]
    sources = {alloc.model_pool("m").page_unit[m.src] for m in moves}
    apply_moves(alloc, moves)
    assert not sources & set(alloc.slabs_of("m"))  # every source slab went back
    alloc.check_integrity()


def test_defrag_for_a_waiting_model_compacts_the_other_pools_first() -> None:
    small = KVFormat(1, 1, 8, KVDtype.FP16, 4)  # 128-byte pages, 8 per slab
    alloc = SlabAllocator(
        8 * 1024, [ModelKV("x", FMT), ModelKV("y", small)], slab_bytes=1024, keep_empty=0
    )
    x, y = alloc.allocate("x", 8), alloc.allocate("y", 16)
    alloc.free("x", x[1:4] + x[7:8])  # x: 1 + 3 live pages, one move empties a slab
    alloc.free("y", y[1:8] + y[15:16])  # y: 1 + 7 live pages, one move empties a slab
    # a pool's own stranded pages are already the waiting model's: spend the budget elsewhere
    assert [m.model for m in plan_defrag(alloc, max_moves=1, for_model="x")] == ["y"]
    assert [m.model for m in plan_defrag(alloc, max_moves=1, for_model="y")] == ["x"]
    assert sorted(m.model for m in plan_defrag(alloc, for_model="x")) == ["x", "y"]


def test_grant_order_puts_reserve_then_urgency_then_mme_first() -> None:
    big, small = KVFormat(2, 2, 16, KVDtype.FP16, 4), KVFormat(2, 2, 16, KVDtype.INT4, 4)
    alloc = SlabAllocator(
        64 * 1024,
        [ModelKV("fp16", big), ModelKV("int4", small), ModelKV("res", big, reserve_bytes=4096)],
    )
    demands = [
        MemoryDemand("fp16", 1, slack_s=0.5, tokens_per_byte=1 / big.bytes_per_token),
        MemoryDemand("int4", 1, slack_s=0.5, tokens_per_byte=1 / small.bytes_per_token),
        MemoryDemand("res", 1, slack_s=9.0, tokens_per_byte=1 / big.bytes_per_token),
    ]
    assert [d.model for d in grant_order(demands, alloc)] == ["res", "int4", "fp16"]
    urgent = MemoryDemand("fp16", 1, slack_s=0.1, tokens_per_byte=1 / big.bytes_per_token)
    alloc.allocate("res", 16)  # reserve met: res no longer jumps the queue
    order = grant_order([*demands[1:], urgent], alloc)
    assert [d.model for d in order] == ["fp16", "int4", "res"]


def test_choose_victim_prefers_slack_and_protects_reserves() -> None:
    alloc = SlabAllocator(
        64 * 1024, [ModelKV("a", FMT), ModelKV("b", FMT, reserve_bytes=2048)], slab_bytes=1024
    )
    alloc.allocate("a", 4)
    alloc.allocate("b", 8)
    cands = [
        PreemptionCandidate("a", "r1", 4, slack_s=1.0, tokens_per_byte=1.0),
        PreemptionCandidate("b", "r2", 4, slack_s=5.0, tokens_per_byte=1.0),
    ]
    # b has the most slack but sits exactly at its reserve (8 pages): a is chosen
    assert choose_victim(cands, alloc).request_id == "r1"
    assert choose_victim(cands[1:], alloc) is None
