"""heap.settle: the heap built so far is frozen and young collections are spaced out, and
cyclic garbage made afterwards is still collected. heap.trim and its schedule: freed memory goes
back to the system, after enough work, when idle or after the longest interval."""

from __future__ import annotations

import gc
import os
import weakref

import pytest

from corral import heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.mark.parametrize("young", [None, heap.HUB_YOUNG_THRESHOLD, heap.SCHEDULER_YOUNG_THRESHOLD])
def test_settle_freezes_the_heap_and_still_collects_cycles(young: int | None) -> None:
    """With the default young threshold (the scheduler's) and the controller's own."""
    threshold = gc.get_threshold()
    try:
        heap.settle() if young is None else heap.settle(young)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == (heap.YOUNG_THRESHOLD if young is None else young)
        assert gc.get_threshold()[1:] == threshold[1:]
        first, second = Node(), Node()
        first.other, second.other = second, first
        gone = weakref.ref(first)
        del first, second
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_trim_schedule_waits_for_enough_work_then_trims_when_idle() -> None:
    schedule = heap.TrimSchedule(min_work=10, min_interval=2.0, max_interval=30.0)
    assert not schedule.due(0.0, 9, idle=True)  # not enough work
    assert not schedule.due(1.0, 1, idle=True)  # enough, but too soon after the start
    assert schedule.due(2.5, 0, idle=True)
    assert schedule.trims == 1 and schedule.work == 0
    assert not schedule.due(3.0, 0, idle=True)  # nothing done since: an idle process never
    assert not schedule.due(100.0, 0, idle=True)  # trims twice for nothing


def test_trim_schedule_while_busy_trims_only_after_the_longest_interval() -> None:
    schedule = heap.TrimSchedule(min_work=10, min_interval=2.0, max_interval=30.0)
    schedule.due(0.0, idle=False)
    assert not schedule.due(5.0, 100, idle=False)
    assert not schedule.due(29.9, 100, idle=False)
    assert schedule.due(30.0, 1, idle=False)
    assert not schedule.due(31.0, 1000, idle=False)
    assert schedule.due(32.5, 0, idle=True)  # idle again: the shorter interval applies
    assert schedule.trims == 2


def test_trim_schedule_refuses_nonsense() -> None:
    for bad in ((0, 1.0, 2.0), (1, -1.0, 2.0), (1, 3.0, 2.0)):
        with pytest.raises(ValueError):
            heap.TrimSchedule(*bad)


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not heap.CAN_TRIM, reason="malloc_trim is glibc's")
def test_trim_gives_back_memory_freed_under_live_blocks() -> None:
    """The pattern of a long run: many mid-sized blocks (C-allocated: over 512 bytes) freed
    while a few allocated among them stay alive. glibc keeps the holes resident; trimming
    returns them. 60 MB allocated, 1/16 kept: well over 25 MB must go back."""
    blocks = [os.urandom(1) * 1500 for _ in range(40_000)]
    kept = blocks[::16]
    del blocks
    before = _rss_mb()
    assert heap.trim()
    after = _rss_mb()
    assert before - after > 25, f"RSS {before:.1f} MB -> {after:.1f} MB after the trim"
    assert len(kept) == 2500
