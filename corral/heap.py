"""The garbage collector's settings for corral's own long-running processes.

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

Never called in a process that runs a user's code (the client, the engines): how a program's
collector runs, and what ``gc.get_objects()`` shows it, is its own choice.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Net allocations between young collections (CPython's default is 700)."""


def settle() -> None:
    """Freeze the heap built so far and space out young collections (see the module doc)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
