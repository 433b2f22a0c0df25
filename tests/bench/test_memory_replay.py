from __future__ import annotations

import pytest

from fineserve.bench.memory_replay import MemoryReplay, ReplayConfig, ReplayRequest
from fineserve.memory import KVDtype, KVFormat
from fineserve.memory.allocator import ModelKV
from fineserve.memory.registry import SCHEMES, make_allocator
from fineserve.memory.slab import SlabAllocator

FMT = KVFormat(1, 1, 16, KVDtype.FP16, 4)  # 4 tokens per 256-byte page


def one_model(arena_pages: int, scheme: str = "slab"):
    opts = {"chunk_bytes": 256} if scheme == "paged_vmm" else {}
    if scheme == "slab":
        opts = {"slab_bytes": 1024}
    return make_allocator(scheme, arena_pages * 256, [ModelKV("m", FMT)], **opts)


def test_requests_that_fit_never_wait() -> None:
    # each request: prompt 7 + 4 output tokens -> at most 3 pages; 4 at once need 12 pages
    reqs = [ReplayRequest("m", 0, 7, 4) for _ in range(4)]
    result = MemoryReplay(one_model(12), reqs, ReplayConfig(sample_every=1)).run()
    assert result.waited == 0 and result.preemptions == 0


def test_second_request_waits_when_memory_holds_one() -> None:
    reqs = [ReplayRequest("m", 0, 15, 2), ReplayRequest("m", 0, 15, 2)]  # 16..17 tokens: 5 pages
    alloc = one_model(6)
    result = MemoryReplay(alloc, reqs, ReplayConfig(sample_every=1)).run()
    assert result.waited == 1 and result.waited_frac == 0.5
    assert alloc.used_pages("m") == 0  # everything returned at the end


def test_growth_beyond_memory_preempts_latest_request() -> None:
    # two requests admitted with 2 pages each (prompt 4 -> 5 tokens); each grows to 4 pages
    reqs = [ReplayRequest("m", 0, 4, 12), ReplayRequest("m", 0, 4, 12)]
    alloc = one_model(6)
    result = MemoryReplay(alloc, reqs, ReplayConfig(sample_every=1)).run()
    assert result.preemptions >= 1
    assert reqs[1].waited and not reqs[0].waited  # the latest admitted gives way
    assert alloc.used_pages("m") == 0


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_scheme_returns_every_page(scheme: str) -> None:
    reqs = [ReplayRequest("m", i, 3 + i % 5, 2 + i % 7) for i in range(40)]
    alloc = one_model(32, scheme)
    result = MemoryReplay(alloc, reqs, ReplayConfig(sample_every=3)).run()
    assert result.requests == 40
    assert alloc.used_pages("m") == 0
    alloc.check_integrity()
    assert all(0.0 <= s["live"] <= 1.0 for s in result.samples)


def test_a_compaction_for_a_later_queue_lets_an_earlier_head_in() -> None:
    # three page sizes in 1 KiB slabs: x 256 B, y 128 B, z 512 B (two per slab)
    sizes = {"x": 16, "y": 8, "z": 32}
    models = [ModelKV(m, KVFormat(1, 1, dim, KVDtype.FP16, 4)) for m, dim in sizes.items()]
    alloc = SlabAllocator(4096, models, slab_bytes=1024, keep_empty=0)
    config = ReplayConfig(sample_every=1, defrag_threshold=0.0, defrag_max_moves=1)
    replay = MemoryReplay(alloc, [], config)
    z = ReplayRequest("z", 0, 3, 100, start=0)
    z.pages = alloc.allocate("z", 8)  # all four slabs
    alloc.free("z", z.pages[1::2])  # one live page per slab: each move can empty one slab
    z.pages = z.pages[::2]
    replay.running["z"].append(z)
    x = ReplayRequest("x", 0, 31, 10)  # 8 pages: two slabs
    y = ReplayRequest("y", 0, 67, 10)  # 17 pages: three slabs
    replay.queues["x"].append(x)
    replay.queues["y"].append(y)
    replay._admit(0)
    # x's compaction (one move) frees one slab, too few for x; y's frees a second, too few for
    # y but enough for x, whose head was already passed over: the pass is repeated
    assert replay.result.pages_moved == 2
    assert replay.running["x"] == [x] and list(replay.queues["y"]) == [y]
    alloc.check_integrity()
