from __future__ import annotations

import pytest

from fineserve.memory import InvalidFormatError, KVDtype, KVFormat, OutOfPagesError
from fineserve.memory.accounting import account
from fineserve.memory.allocator import ModelKV
from fineserve.memory.baselines.paged_vmm import granule_geometry
from fineserve.memory.registry import make_allocator

MIB = 1024 * 1024
FP16 = KVFormat(32, 8, 128, KVDtype.FP16)  # 2 MiB pages
INT4 = KVFormat(32, 8, 128, KVDtype.INT4)  # 544 KiB pages


def test_static_partitions_follow_demand_weights_and_never_share() -> None:
    models = [ModelKV("a", FP16, demand_weight=3.0), ModelKV("b", FP16, demand_weight=1.0)]
    alloc = make_allocator("static", 64 * MIB, models)
    assert alloc.available_pages("a") == 24 and alloc.available_pages("b") == 8
    alloc.allocate("b", 8)
    with pytest.raises(OutOfPagesError):
        alloc.allocate("b", 1)  # a's idle region is of no use to b
    alloc.check_integrity()


def test_uniform_wastes_the_rest_of_the_block_for_small_pages() -> None:
    models = [ModelKV("fp16", FP16), ModelKV("int4", INT4)]
    alloc = make_allocator("uniform", 64 * MIB, models)
    assert alloc.page_stride("int4") == 2 * MIB
    assert alloc.page_format("int4").tokens_per_page == 16
    alloc.allocate("int4", 4)
    acc = account(alloc.usage())
    assert acc.internal_bytes == 4 * (2 * MIB - 544 * 1024)
    alloc.check_integrity()


def test_uniform_bytes_packs_more_tokens_into_the_block() -> None:
    models = [ModelKV("fp16", FP16), ModelKV("int4", INT4)]
    alloc = make_allocator("uniform_bytes", 64 * MIB, models)
    fmt = alloc.page_format("int4")
    assert fmt.tokens_per_page == (2 * MIB) // INT4.bytes_per_token == 60
    assert fmt.page_bytes <= 2 * MIB < fmt.page_bytes + INT4.bytes_per_token


def test_paged_vmm_granule_maps_one_chunk_per_layer_tensor() -> None:
    chunks, blocks = granule_geometry(FP16)
    # per layer K (or V) block: 16 tokens x 8 heads x 128 x 2 B = 32 KiB -> 64 blocks per chunk
    assert (chunks, blocks) == (64, 64)
    alloc = make_allocator("paged_vmm", 1024 * MIB, [ModelKV("m", FP16)], map_cost_s=1e-5)
    alloc.allocate("m", 1)
    usage = alloc.usage()
    assert usage.extra["map_ops"] == 64
    assert usage.models["m"].held_bytes == 128 * MIB
    assert account(usage).stranded_bytes == 63 * 2 * MIB


def test_paged_vmm_charges_map_operations_to_the_model_that_caused_them() -> None:
    alloc = make_allocator(
        "paged_vmm", 256 * MIB, [ModelKV("a", FP16), ModelKV("b", FP16)], map_cost_s=1e-5
    )
    a_pages = alloc.allocate("a", 1)  # maps a's granule: 64 chunks
    alloc.allocate("b", 1)  # maps b's granule: 64 chunks; the arena is now fully mapped
    alloc.free("a", a_pages)  # a keeps its empty granule mapped (hysteresis)
    alloc.allocate("b", 64)  # b unmaps a's spare granule and maps its own: both b's doing
    assert alloc.map_ops_by_model == {"a": 64, "b": 64 + 64 + 64}
    assert sum(alloc.map_ops_by_model.values()) == alloc.usage().extra["map_ops"]


def test_unknown_scheme_and_empty_model_list_are_clear_errors() -> None:
    with pytest.raises(InvalidFormatError, match="unknown KV memory scheme"):
        make_allocator("magic", MIB, [ModelKV("m", FP16)])
    with pytest.raises(InvalidFormatError, match="at least one model"):
        make_allocator("slab", MIB, [])


def test_duplicate_model_names_are_rejected() -> None:
    with pytest.raises(InvalidFormatError, match="unique"):
        make_allocator("slab", 64 * MIB, [ModelKV("m", FP16), ModelKV("m", INT4)])


def test_static_partition_keeps_room_for_the_longest_request() -> None:
    models = [
        ModelKV("busy", FP16, reserve_bytes=8 * MIB, demand_weight=9.0),
        ModelKV("idle", FP16, reserve_bytes=8 * MIB, demand_weight=1.0),
    ]
    alloc = make_allocator("static", 36 * MIB, models)
    # 16 MiB of floors, the other 20 MiB split 9:1
    assert alloc.available_pages("busy") == (8 + 18) // 2
    assert alloc.available_pages("idle") == (8 + 2) // 2
    with pytest.raises(InvalidFormatError, match="reserved bytes"):
        make_allocator("static", 12 * MIB, models)
