"""The Hub's memory per stored task, alone: what its tables hold once N tasks are recorded.

``bench_hub_copies.py``'s stream of load-balanced no-op copies (a real HubShell, the default
SQLite store with the default retention, no purge) is fed twice, ``--tasks`` and twice as many;
after the last write of each, with every copy fed and nothing pending, tracemalloc's traced
Python memory is read (the bytes a task leaves behind are the difference between the two runs,
divided by ``--tasks``: what is made once cancels out), with the growth of each source line
that allocated it, and each table of the Hub and its store that grows with the tasks stored
is sized (the container, its keys and its values, each object counted once):

    PYTHONPATH=. .venv/bin/python bench/bench_hub_memory.py --tasks 20000

Not counted: SQLite's own memory (its page cache is bounded by ``cache_size``) and what the
C allocator keeps after a burst; ``memory.py --no-purge`` measures the whole process's RSS in
a cluster. Another tree is measured with ``CORRAL_BENCH_SOURCE=DIR PYTHONPATH=DIR``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import tracemalloc
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench_hub_copies import run_once
from common import use_source, write_results

TASKS = 20000
TOP_LINES = 12


def deep_size(root: Any, seen: set[int]) -> int:
    """Bytes of ``root`` and what it holds (containers, their keys and values, an object's
    ``__dict__`` or slots), each object once across calls sharing ``seen``."""
    total = 0
    stack = [root]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset | deque):
            stack.extend(item)
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            stack.append(vars(item))
        elif hasattr(item, "__slots__"):
            stack.extend(getattr(item, name) for name in item.__slots__ if hasattr(item, name))
    return total


def tables(hub: Any, store: Any) -> Iterable[tuple[str, Any]]:
    """The Hub's and its store's tables that may grow with the tasks stored (those a tree
    lacks are skipped)."""
    yield "hub.pending", hub.pending
    for entry in hub.engines.values():
        yield f"engine {entry.id} completed", getattr(entry, "completed", None)
    yield "hub.activity (bounded log)", hub.activity
    yield "hub.purged", hub.purged
    yield "hub.purge_on_record", hub.purge_on_record
    retention = store.retention
    if retention is not None:
        # the tables themselves (a tree whose ``sizes`` and ``completed`` are copies made
        # when asked keeps them under other names)
        table = getattr(retention, "_table", None)
        if table is None:
            yield "retention.sizes", retention.sizes
            yield "retention.completed", retention.completed
        else:
            yield "retention table", table
            yield "retention completion log", (retention._log, retention._times)
        yield "retention.purged", retention.purged
    known = getattr(store, "_known", None)
    yield "writer's known rows (bounded)", getattr(known, "ids", None)


def measure(tasks: int, folder: Path, lag: int) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def inspect(hub: Any, store: Any) -> None:
        gc.collect()
        found["traced"] = tracemalloc.get_traced_memory()[0]
        found["snapshot"] = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        seen: set[int] = set()
        found["tables"] = {
            name: deep_size(table, seen) for name, table in tables(hub, store) if table is not None
        }

    run_once(tasks, lag, 0.2, folder, "sqlite", 0.0, inspect=inspect)
    gc.unfreeze()  # the run froze its Hub (heap.settle): let its cycles go before the next
    gc.collect()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=TASKS)
    parser.add_argument("--lag", type=int, default=8, help="requests ahead of the replies")
    args = parser.parse_args()
    origin = use_source()
    tracemalloc.start(1)
    runs = []
    for count in (args.tasks, 2 * args.tasks):
        with tempfile.TemporaryDirectory(prefix="bench-hub-memory-") as folder:
            runs.append(measure(count, Path(folder), args.lag))
    small, large = runs
    per_task = (large["traced"] - small["traced"]) / args.tasks
    print(f"traced Python memory per stored task: {per_task:.0f} bytes")
    print("  by table (bytes per task, from the difference between the runs):")
    per_table = {}
    for name, size in large["tables"].items():
        per_table[name] = (size - small["tables"].get(name, 0)) / args.tasks
        print(f"    {name:<34} {per_table[name]:7.1f}   ({size / 1e6:.2f} MB at {2 * args.tasks})")
    print("  by line that allocated it:")
    lines = []
    for stat in large["snapshot"].compare_to(small["snapshot"], "lineno")[:TOP_LINES]:
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        lines.append({"line": where, "bytes_per_task": stat.size_diff / args.tasks})
        print(f"    {where:<40} {stat.size_diff / args.tasks:7.1f}")
    write_results(
        "hub_memory",
        {
            "settings": vars(args) | {"corral": str(origin)},
            "bytes_per_task": per_task,
            "tables_bytes_per_task": per_table,
            "top_lines": lines,
        },
    )


if __name__ == "__main__":
    main()
