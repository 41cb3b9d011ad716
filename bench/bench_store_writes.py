"""What the SQLite store costs per task, alone: the Hub's own writes replayed into a fresh store.

The writes are recorded once from a real Hub fed the scheduler's copies of no-op tasks
(``bench_hub_copies.py``'s stream, by default as in ``bench_cpu_roles.py``: every task waits
for an engine, requests 2000 ahead of the replies), then replayed ``--repeats`` times into a
new :class:`~corral.controller.store.SQLiteStore` (``--store memory``: the memory store, for
reference), with the controller's default retention, at
``--rate`` tasks per second, so the writer thread forms the batches it forms in a cluster.
Prints CPU microseconds per task in the caller's thread (what the Hub's loop pays: checking,
encoding, size bookkeeping, queueing) and in the writer thread (the rest of the process), and
checks that every task reads back complete:

    PYTHONPATH=. .venv/bin/python bench/bench_store_writes.py --repeats 5

``--writer-alone N`` measures the writer's work without its thread: the writes encoded as the
store encodes them, cut into batches of the writes of N tasks each (at 4000 tasks/s a 20 ms
linger gathers about 80), applied one batch after the other by the store's batch function in
this thread (private, called here only to time it free of thread hand-offs and pacing).

``--by-value`` pickles the tasks' function by value, as a client does a function defined in
``__main__`` (``bench_cpu_roles.py``'s, a notebook's): 477 bytes in each request's row instead of
52 for one pickled by reference (the module ``bench_hub_copies``, imported here). A cluster's
rows are that size, and the writer writes about twice the WAL frames per task then
(bench/README.md, round thirteen).

Another tree is measured with ``CORRAL_BENCH_SOURCE=DIR PYTHONPATH=DIR``, as the other scripts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_hub_copies import feed_options
from common import use_source, write_results

LAG = 2000
WAITING = 1.0
RATE = 4000.0
BLOCK = 50  # tasks' writes replayed, then the pace is kept


Write = tuple[str, str, dict[str, Any]]


def record_writes(tasks: int, lag: int, waiting: float) -> tuple[list[Write], list[int]]:
    """The Hub's store calls for a stream of ``tasks`` tasks, and after which call each task's
    last write was made (the replay keeps the pace by tasks, not calls)."""
    from bench_hub_copies import run_once

    from corral.controller.store import MemoryStore

    writes: list[Write] = []

    class Recording(MemoryStore):
        def add_record(self, msg_id: str, record: dict[str, Any]) -> None:
            writes.append(("add", msg_id, record))
            super().add_record(msg_id, record)

        def update_record(self, msg_id: str, changes: dict[str, Any]) -> None:
            writes.append(("update", msg_id, changes))
            super().update_record(msg_id, changes)

    with tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
        run_once(tasks, lag, waiting, Path(folder), "memory", 0.0, Recording())
    results = [i for i, (_, _, fields) in enumerate(writes) if "result_content" in fields]
    return writes, results


def replay(
    writes: list[Write], results: list[int], rate: float, folder: Path, kind: str
) -> tuple[float, float]:
    """(caller thread, writer) CPU us per task for one replay into a new store."""
    from corral.controller.store import MemoryStore, ResultStore, RetentionSettings, SQLiteStore

    tasks = len(results)
    store: ResultStore = (
        SQLiteStore(folder / "tasks.db", retention=RetentionSettings())
        if kind == "sqlite"
        else MemoryStore(RetentionSettings())
    )
    try:
        calling = 0.0
        started_process = time.process_time()
        started_thread = time.thread_time()
        paced = time.perf_counter()
        done = 0
        for block in range(0, tasks, BLOCK):
            end = results[min(tasks, block + BLOCK) - 1] + 1
            began = time.thread_time()
            for kind, msg_id, fields in writes[done:end]:
                if kind == "add":
                    store.add_record(msg_id, fields)
                else:
                    store.update_record(msg_id, fields)
            calling += time.thread_time() - began
            done = end
            if rate:  # the writer sees a cluster's pace, so it forms a cluster's batches
                time.sleep(max(0.0, paced + (block + BLOCK) / rate - time.perf_counter()))
        store.flush()
        thread = time.thread_time() - started_thread
        process = time.process_time() - started_process
        found = store.find_records({"status": "ok"}, ["msg_id", "result_buffers", "buffers"])
        if len(found) != tasks or not all(r["result_buffers"] and r["buffers"] for r in found):
            raise SystemExit(f"{len(found)} of {tasks} tasks read back complete")
        return calling / tasks * 1e6, (process - thread) / tasks * 1e6
    finally:
        store.close()


def writer_alone(writes: list[Write], results: list[int], tasks: int, folder: Path) -> float:
    """CPU us per task of applying the writes in batches of ``tasks`` tasks' writes, no thread."""
    from corral.controller.store import RetentionSettings, SQLiteStore
    from corral.controller.store.base import WriteOp
    from corral.controller.store.sqlite_rows import encode_exact
    from corral.controller.store.sqlite_schema import CHUNK_BYTES

    limit = RetentionSettings().buffer_limit
    batches: list[list[Any]] = []
    done = 0
    for block in range(0, len(results), tasks):
        end = results[min(len(results), block + tasks) - 1] + 1
        batch: list[Any] = []
        for _, msg_id, fields in writes[done:end]:
            row = encode_exact(msg_id, fields, CHUNK_BYTES, limit)
            if row is None:
                raise SystemExit(f"{msg_id}: not the Hub's usual record")
            batch.append(WriteOp("upsert", (msg_id,), row))
        batches.append(batch)
        done = end
    store = SQLiteStore(folder / "tasks.db", retention=RetentionSettings())
    try:
        store.flush()
        started = time.thread_time()
        for batch in batches:
            store._apply(batch)  # the writer thread's own step
        return (time.thread_time() - started) / len(results) * 1e6
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    feed_options(parser, lag=LAG, waiting=WAITING, rate=RATE)
    parser.add_argument("--writer-alone", type=int, metavar="TASKS", help="see the docs")
    parser.add_argument("--by-value", action="store_true", help="see the docs")
    args = parser.parse_args()
    origin = use_source()
    if args.by_value:
        import bench_hub_copies
        import cloudpickle

        cloudpickle.register_pickle_by_value(bench_hub_copies)
    writes, results = record_writes(args.tasks, args.lag, args.waiting)
    if args.writer_alone:
        alone: list[float] = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
                alone.append(writer_alone(writes, results, args.writer_alone, Path(folder)))
        print("  writer alone, us/task: " + ", ".join(f"{value:.1f}" for value in alone))
        print(f"median {statistics.median(alone):.1f}, min {min(alone):.1f}")
        write_results("store_writes", {"settings": vars(args), "writer_alone_us": alone})
        return
    caller_us: list[float] = []
    writer_us: list[float] = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
            caller, writer = replay(writes, results, args.rate, Path(folder), args.store)
        caller_us.append(caller)
        writer_us.append(writer)
        print(f"  caller {caller:6.1f} us/task, writer {writer:6.1f}, total {caller + writer:6.1f}")
    caller = statistics.median(caller_us)
    writer = statistics.median(writer_us)
    print(
        f"{args.tasks} tasks ({len(writes)} writes) x {args.repeats}, median CPU us per task: "
        f"caller {caller:.1f}, writer {writer:.1f}"
    )
    write_results(
        "store_writes",
        {
            "settings": vars(args) | {"corral": str(origin)},
            "caller_us": caller_us,
            "writer_us": writer_us,
            "median_us": {"caller": caller, "writer": writer},
        },
    )


if __name__ == "__main__":
    main()
