"""The garbage collector's settings for corral's own long-running processes, and giving the
C allocator's free memory back to the system after a burst of work.

The controller and the task scheduler allocate a few short-lived containers per
message (decoded JSON, frames, records) and keep a heap that hardly changes after start-up
(modules, functions, the cores' tables). With CPython's defaults a young collection runs every
700 net allocations, and every full collection walks the whole start-up heap again: profiles
of a stream of no-op tasks show the collector as one of the largest items in the scheduler
(about 5% of its CPU, most of it in full collections). :func:`settle` is called once a
process's setup is done: it moves everything alive then out of the collector's sight
(``gc.freeze``: those objects live for the whole run) and lets young collections run less
often. Cyclic garbage made afterwards is still collected; it only waits a little longer. The
price: a frozen object that later becomes part of a garbage cycle is never collected, which
bounds the loss by what was alive at start-up (collected once just before freezing).

:func:`settle` is never called in a process that runs a user's code (the client, the
engines): how a program's collector runs, and what ``gc.get_objects()`` shows it, is its own
choice.

Trimming (:func:`trim`, when :class:`TrimSchedule` says so). Every task allocates frames, JSON
and zmq message buffers with the C allocator (Python objects over 512 bytes, dict tables, zmq's
receive buffers in its I/O thread's arena), and frees them once answered. glibc keeps what is
freed inside its arenas for reuse and returns only a large free block at the very top of the
main heap, and only once it exceeds a threshold that grows each time a large block it had
mapped on its own is freed (after which blocks of that size come from the heap too). A hole
under a live block stays resident. Over a long stream of tasks with bounded tables the holes
add up: measured over 400,000 no-op tasks, the scheduler's allocator held 30-40 MB free
(``mallinfo2``) of its 35-60 MB and the Hub's free part grew in 10 MB steps (20 to 41 MB), with
RSS following, while the Python heap (``sys._debugmallocstats``) and the cores' tables stayed
flat. ``malloc_trim(0)`` gives back every free page of every arena (``madvise``), at a cost of
a few ms to a few tens of ms for a heap of that size; so it runs after a burst of work, when
the process is idle (no task pending, a purge just done), or at the latest every
``max_interval`` seconds while work goes on. The scheduler and the Hub trim so, and a client
after a local purge (a program sees no difference but its RSS). Python's own small-object
arenas are not the C allocator's and are untouched. Without glibc (musl, macOS) :func:`trim`
does nothing: those allocators return memory their own way.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable

YOUNG_THRESHOLD = 10_000
"""Net allocations between young collections (CPython's default is 700)."""

HUB_YOUNG_THRESHOLD = 1_000_000
"""The controller's (:func:`settle` of the Hub's process). Its store's writer holds each
task's encoded rows (a tuple of values, the buffers' list and views) until a batch is
committed, 20 ms and more, and during a burst of copies (the Hub, at a lower priority, catching
up) more than 10,000 such objects are alive at once (at the young collections of a
``bench_cpu_roles.py`` run the writer held 1,000 to 27,000 queued writes, four or five such
objects each): a young collection then walked every one of them and moved them to the middle
generation, to be walked again there, and found nothing to free. Measured with
``bench_cpu_roles.py`` (30,000 load-balanced no-ops, the collector's own callbacks): the
controller's collections cost 0.094 s (about 3 us per task) at 10,000 and 0.012 s at 100,000.
The Hub makes little cyclic garbage (some 500 objects collected in that run): what waits
longer to be collected is little. At 100,000 (issue 13, round nine) the collections that still
came during a run (after a burst, when the Hub catches up and the writer holds thousands of
writes) collected nothing and took 20-30 ms each: 60,000 load-balanced no-ops, 0.090 s of
collections (1.5 us per task), 60,000 direct 0.027 s; at 1,000,000 none came in either run (the
queued writes are freed long before the count gets there). A collection that does come walks
what is alive then, some tens of ms at most, once per far more tasks."""


SCHEDULER_YOUNG_THRESHOLD = 100_000
"""The task scheduler's (:func:`settle` in :mod:`corral.controller.scheduler`). It holds each
waiting task's request (a ``Pending``, its header and metadata dicts, its frames' list, the
core's record) until an engine answers, and under a burst thousands wait at once: at 10,000
young collections kept finding them alive and moving them up a generation, to be walked again
there. Measured with ``bench_cpu_roles.py`` (15,000 load-balanced no-ops, the collector's own
callbacks in the scheduler, start-up included, five and six alternating runs): 0.0153-0.0211 s
at 10,000 (40-43 young collections), 0.0076-0.0091 s at 100,000 in four runs (32-33, most of
them during the imports before :func:`settle`) and 0.028 s in two, where one young collection
fell in a burst: about 0.6 us per task by the medians, 0.2 by the means. The scheduler makes
little cyclic garbage (450-463 objects collected in a run, start-up included)."""


def settle(young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Freeze the heap built so far and space out young collections to one per
    ``young_threshold`` net allocations (see the module doc)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None when the C library has none."""
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim_function: Callable[[int], int] = function
    return trim_function


_MALLOC_TRIM = _malloc_trim()
CAN_TRIM = _MALLOC_TRIM is not None
"""Whether :func:`trim` can give memory back here (glibc)."""


def trim() -> bool:
    """Give the C allocator's free pages back to the system; True if some were (glibc only:
    elsewhere a no-op returning False). Costs a walk over the free blocks: call it when
    :class:`TrimSchedule` says so, not per message."""
    if _MALLOC_TRIM is None:
        return False
    return bool(_MALLOC_TRIM(0))


class TrimSchedule:
    """When to :func:`trim`: once at least ``min_work`` units of work (tasks, purged records)
    were done since the last trim and ``min_interval`` seconds have passed, at the first idle
    moment, or, if the process never goes idle, ``max_interval`` seconds after the last trim.
    So an idle process never trims twice for nothing, a busy one trims at most every
    ``min_interval`` seconds, and a stream that never pauses still gives memory back.
    Sans-I/O: time comes in as ``now`` (a monotonic clock); the caller does the trimming.
    """

    def __init__(
        self, min_work: int = 10_000, min_interval: float = 2.0, max_interval: float = 60.0
    ) -> None:
        if min_work < 1 or min_interval < 0 or max_interval < min_interval:
            raise ValueError(
                "a trim schedule needs min_work >= 1 and 0 <= min_interval <= max_interval"
            )
        self.min_work = min_work
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.work = 0  # since the last trim
        self.last: float | None = None  # when it last trimmed, or first counted work
        self.trims = 0

    def due(self, now: float, work: int = 0, *, idle: bool) -> bool:
        """Count ``work`` more units; True (and the trim counted as done at ``now``) when the
        caller should trim now. Intervals run from the last trim, or from the first call."""
        if self.last is None:
            self.last = now
        self.work += work
        if self.work < self.min_work:
            return False
        since = now - self.last
        if since < self.min_interval or (not idle and since < self.max_interval):
            return False
        self.work = 0
        self.last = now
        self.trims += 1
        return True
