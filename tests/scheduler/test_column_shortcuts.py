"""Shortcuts of the scheduler give what the per-sequence code gives: decode columns
(`DecodeCols.rebuild`), the skip over refused prefill candidates
(`_skip_refused`), the one-model memory order, `waiting_of`, and `_trim`'s early return."""

from __future__ import annotations

import random
from types import ModuleType

import pytest

from fineserve.engine.engine import Engine
from fineserve.scheduler.local.config import SchedulerConfig
from fineserve.scheduler.local.scheduler import LocalScheduler, _indices, _next_stop
from fineserve.scheduler.local.sequence import Sequence, Status
from fineserve.scheduler.local.state import DecodeCols, Lane


def busy_engine(h: ModuleType, seed: int, pages: int = 120) -> Engine:
    """Model "a" (and "b") with requests of random lengths, some steps run: decodes,
    prefills and waiting requests at once."""
    rng = random.Random(seed)
    config = SchedulerConfig(token_budget=64, admit_headroom_pages=2, growth_pages_per_running=1)
    engine = h.make_engine([h.spec("a"), h.spec("b")], pages=pages, config=config)
    for i in range(60):
        model = "a" if i % 3 else "b"
        prompt = [1] * rng.randint(5, 200)
        engine.add_request(f"r{i}", model, prompt, max_tokens=rng.randint(2, 80), stream=False)
        if i % 4 == 0:
            engine.step()
    return engine


@pytest.mark.parametrize("seed", range(4))
def test_rebuild_gives_the_per_sequence_columns(h: ModuleType, seed: int) -> None:
    engine = busy_engine(h, seed)
    sched = engine.scheduler
    decoding = sched.decoding["a"]
    assert decoding, "the test needs decodes"
    cols = DecodeCols()
    t = 16
    cols.rebuild(decoding, t)
    seqs = list(decoding.values())
    assert cols.seqs == seqs and cols.request_ids == list(decoding)
    assert all(s.num_computed == len(s.tokens) - 1 for s in seqs)  # tracked
    assert cols.positions == [s.num_computed for s in seqs]
    assert cols.num_prompt == [s.num_prompt for s in seqs]
    assert all(a is s.tokens for a, s in zip(cols.tokens, seqs, strict=True))
    assert all(a is s.pages for a, s in zip(cols.page_tables, seqs, strict=True))
    assert cols.sampling == [s.sampling for s in seqs]
    assert cols.plain == (not any(s.stream or s.stop_token_ids for s in seqs))
    assert cols.left == min(s.end_len - len(s.tokens) for s in seqs)
    assert cols.edges is not None
    for r in range(t):
        assert cols.edges[r] == [i for i, p in enumerate(cols.positions) if p % t == r]


def test_rebuild_sees_streams_and_stop_tokens(h: ModuleType) -> None:
    engine = h.make_engine([h.spec("a")], pages=200)
    engine.add_request("s", "a", [1] * 8, max_tokens=20, stream=True)
    engine.add_request("q", "a", [1] * 8, max_tokens=20, stream=False)
    engine.step()
    cols = DecodeCols()
    cols.rebuild(engine.scheduler.decoding["a"], 16)
    assert not cols.plain
    engine.scheduler.decoding["a"]["s"].stream = False
    cols.rebuild(engine.scheduler.decoding["a"], 16)
    assert cols.plain


@pytest.mark.parametrize("seed", range(6))
def test_skip_refused_skips_exactly_the_refused(h: ModuleType, seed: int) -> None:
    """From every index, `_skip_refused` stops at the first candidate `_can_start` would
    not refuse (or that is not waiting), for budgets above and below the page cap."""
    engine = busy_engine(h, seed, pages=60 + 20 * seed)
    sched = engine.scheduler
    assert isinstance(sched, LocalScheduler)
    order = [s for s in sched.waiting.values() if s.model == "a"]
    order += [s for s in sched.prefilling.values() if s.model == "a"]
    random.Random(seed).shuffle(order)
    assert any(s.status is Status.WAITING for s in order)
    running = sched.num_running("a")
    stops = [i for i, s in enumerate(order) if s.status is not Status.WAITING]
    assert stops, "the test needs running candidates among the waiting"
    skipped_some = False
    for free in (0, 3, 8, 20, 2000):
        counts: list[int | None] = [running, free]
        for budget in (1, 16, 64, 400):
            for at in range(len(order) + 1):
                got = sched._skip_refused(order, at, budget, counts, stops)
                sched._admit_memo = {"a": counts}  # `_can_start` reads these counts
                expected = at
                while expected < len(order):
                    seq = order[expected]
                    chunk = min(seq.pending, budget)
                    if seq.status is not Status.WAITING or sched._can_start(seq, chunk):
                        break
                    expected += 1
                sched._admit_memo = None
                assert got == expected, (free, budget, at)
                skipped_some |= got > at
    assert skipped_some, "the test needs refusals"
    counts = [sched.config.max_running, 2000]  # at max_running
    ends = [sched._skip_refused(order, at, 64, counts, stops) for at in range(len(order))]
    waiting = [s.status is Status.WAITING for s in order]
    for at, stop in enumerate(ends):  # every waiting one refused: the next one running
        assert stop == next((i for i in range(at, len(order)) if not waiting[i]), len(order))


def test_memory_order_keeps_a_one_model_order(h: ModuleType) -> None:
    """A one-model lane skips `_memory_order`: sorting one model's candidates by model
    rank keeps their order, also when memory is short."""
    engine = busy_engine(h, 1, pages=40)
    sched = engine.scheduler
    assert isinstance(sched, LocalScheduler)
    order = [s for s in sched.waiting.values() if s.model == "a"]
    order.reverse()
    assert len(order) > 2
    assert sched._memory_order(order, 10_000, 0.0) == order


def check_waiting_of(engine: Engine) -> None:
    sched = engine.scheduler
    for m, queue in sched.waiting_of.items():
        assert list(queue.items()) == [(k, s) for k, s in sched.waiting.items() if s.model == m]


@pytest.mark.parametrize("seed", range(3))
def test_waiting_of_is_waiting_by_model(h: ModuleType, seed: int) -> None:
    """Through arrivals, admissions, preemptions (little memory), aborts and ends."""
    engine = busy_engine(h, seed, pages=30)
    rng = random.Random(seed)
    check_waiting_of(engine)
    preempted = 0
    while engine.has_work():
        engine.step()
        preempted = engine.scheduler.stats.preemptions
        check_waiting_of(engine)
        if rng.random() < 0.1 and engine.scheduler.seqs:
            engine.abort(rng.choice(sorted(engine.scheduler.seqs)))
            check_waiting_of(engine)
    assert preempted > 0, "the test needs preemptions"
    assert all(not q for q in engine.scheduler.waiting_of.values())


def test_trim_returns_early_only_without_surplus(h: ModuleType) -> None:
    """`_trim` frees exactly the pages beyond ceil((p + steps) / t) of each decode."""
    engine = h.make_engine([h.spec("a", tpot=1.0)], pages=400)
    for i in range(6):
        engine.add_request(f"r{i}", "a", [1] * (10 + 9 * i), max_tokens=200, stream=False)
    while engine.scheduler.prefilling or engine.scheduler.waiting:
        engine.step()
    plan = engine.begin_step(engine.clock.now(), max_steps=40)
    assert plan.num_steps == 40
    sched = engine.scheduler
    batch = plan.batches[0]
    seqs: list[Sequence] = list(sched.decoding["a"].values())
    before = [len(s.pages) for s in seqs]
    sched._trim(batch, seqs, 40)  # keeps every page: the plan's 40 iterations need them
    assert [len(s.pages) for s in seqs] == before
    sched._trim(batch, seqs, 1)
    t = 16
    assert [len(s.pages) for s in seqs] == [
        min(n, -(-(p + 1) // t)) for n, p in zip(before, batch.positions, strict=True)
    ]
    assert [len(s.pages) for s in seqs] != before


@pytest.mark.parametrize("seed", range(3))
def test_has_candidates_is_truth_of_lane_candidates(h: ModuleType, seed: int) -> None:
    engine = h.make_engine([h.spec("a"), h.spec("b"), h.spec("c")], pages=100)
    rng = random.Random(seed)
    sched = engine.scheduler
    assert isinstance(sched, LocalScheduler)
    lanes = [frozenset(m) for m in ("a", "b", "c", "ab", "bc", "abc")]
    seen = set()
    for i in range(40):
        model = rng.choice("ab")
        engine.add_request(f"r{i}", model, [1] * rng.randint(5, 150), max_tokens=5, stream=False)
        if rng.random() < 0.5:
            engine.step()
        for models in lanes:
            lane = Lane(0, models)
            sched._all_lane = len(models) == len(sched.models)
            expected = bool(sched._lane_candidates(lane))
            assert sched._has_candidates(lane) == expected
            seen.add(expected)
    assert seen == {True, False}


def test_indices_and_next_stop() -> None:
    seqs = [Sequence(f"r{i}", "a", [1, 2], 4, 0.0) for i in range(6)]
    order = [seqs[i] for i in (3, 0, 5, 1)]
    assert _indices(order, [seqs[1], seqs[2], seqs[3]]) == [0, 3]  # seqs[2] is not in it
    assert [_next_stop([0, 3], at, 4) for at in range(5)] == [0, 3, 3, 3, 4]
    assert _next_stop([], 0, 4) == 4


def fcfs_run(h: ModuleType, seed: int, shortcuts: bool) -> tuple[list[object], int, int]:
    """A one-model FCFS engine short of memory with a queue: (outputs, preemptions, passes
    skipped by `_refuses_all`)."""
    rng = random.Random(seed)
    config = SchedulerConfig(token_budget=64, admit_headroom_pages=2, growth_pages_per_running=1)
    engine = h.make_engine([h.spec("a")], pages=50, config=config)
    sched = engine.scheduler
    assert isinstance(sched, LocalScheduler)
    sched.shortcuts = shortcuts
    skipped = 0
    again = sched._refuses_all

    def counting(lane: Lane, budget: int) -> bool:
        nonlocal skipped
        hit = again(lane, budget)
        skipped += hit
        return hit

    sched._refuses_all = counting  # type: ignore[method-assign]
    outputs: list[object] = []
    for i in range(40):
        prompt = [1] * rng.randint(5, 120)
        engine.add_request(f"r{i}", "a", prompt, max_tokens=rng.randint(5, 60), stream=False)
        for _ in range(rng.randint(0, 3)):
            outputs += engine.step()
    while engine.has_work():
        outputs += engine.step()
    return outputs, sched.stats.preemptions, skipped


@pytest.mark.parametrize("seed", range(4))
def test_refuses_all_skips_only_passes_that_refuse_all(h: ModuleType, seed: int) -> None:
    """Every output (order, tokens, ends) and preemption is that of the plain path, and the
    shortcut did skip passes."""
    fast = fcfs_run(h, seed, shortcuts=True)
    plain = fcfs_run(h, seed, shortcuts=False)
    assert fast[:2] == plain[:2]
    assert plain[2] == 0 and fast[2] > 0
