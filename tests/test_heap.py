"""heap.settle: the heap built so far is frozen and young collections are spaced out, and
cyclic garbage made afterwards is still collected."""

from __future__ import annotations

import gc
import weakref

from corral import heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_settle_freezes_the_heap_and_still_collects_cycles() -> None:
    threshold = gc.get_threshold()
    try:
        heap.settle()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
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
