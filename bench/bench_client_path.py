"""The client's CPU per task, its two halves measured apart (issue 13, round four).

- **submit**: ``LoadBalancedView.apply_async(one)`` into a real controller with no engines (the
  scheduler holds every task, so no reply competes with the submitting thread): the calling
  thread's CPU per call, from ``pack_apply_message`` to the AsyncResult and the hand-off to
  the I/O thread. The I/O thread's CPU for sending them is reported beside it.
- **reply**: what the I/O thread does with one reply, without sockets: verify and decode the
  frames an engine's session signed (:meth:`Session.feed`, or the client's inline reading
  ``corral.client.reply_wire.feed`` in a tree that has it), then ``Records.handle_reply``,
  which settles the request's future and the AsyncResult waiting on it.
- **pack**: ``pack_apply_message`` alone, for a function of ``__main__`` (by value), a builtin
  (by reference) and a function of ``__main__`` with a small argument.
- **round trips** (``--cluster``, issue 13 round seven): a real cluster of 2 engines; ``--tasks``
  no-ops submitted one by one (``apply_async``, all held) then awaited, on a load-balanced view
  and round-robin on two direct views: the CPU per task of the user's thread and of the
  client's I/O thread (``/proc``), and of the cyclic collector on the user's thread
  (``gc.callbacks``); then the median and p99 of ``view.apply_async(one).get()`` on one
  engine after a warm-up, with the CPU of the two threads per round trip (round eight: one
  task at a time, every step runs cold, so a round trip costs them several times a task of
  the batches above).

Each figure is the median over ``--rounds`` rounds of the thread's CPU time (``time.thread_time``)
divided by the calls; the cyclic collector runs as usual. Another corral tree (a baseline from
``git archive``) is measured with ``CORRAL_BENCH_SOURCE=DIR PYTHONPATH=DIR``::

    PYTHONPATH=. .bench-venv/bin/python bench/bench_client_path.py [--cluster]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import check, corral_cluster, latency, use_source, write_results

ROUNDS = 7
CALLS = 5000
TASKS = 15000
LATENCY_ROUNDS = 2000


def one() -> int:
    return 1


def add(x: int) -> int:
    return x + 1


def per_call(step: Any, calls: int, rounds: int) -> float:
    """Median thread CPU microseconds per call of ``step`` (called ``calls`` times a round)."""
    figures = []
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(calls):
            step()
        figures.append((time.thread_time() - start) / calls * 1e6)
    return statistics.median(figures)


def pack_figures(rounds: int) -> dict[str, float]:
    from corral.protocol.serialize import pack_apply_message

    return {
        "pack no-op of __main__": per_call(lambda: pack_apply_message(one, (), {}), CALLS, rounds),
        "pack builtin len": per_call(lambda: pack_apply_message(len, (), {}), CALLS, rounds),
        "pack add(7) of __main__": per_call(
            lambda: pack_apply_message(add, (7,), {}), CALLS, rounds
        ),
    }


def reply_figures(rounds: int) -> dict[str, float]:
    """Feed and settle replies as the client's I/O thread does, one AsyncResult each."""
    from corral.client.asyncresult import AsyncResult
    from corral.client.records import Records
    from corral.protocol.serialize import pack_apply_message, serialize_object
    from corral.protocol.session import Session, frame_view

    try:  # the client's own reading of the usual reply, in a tree that has one
        from corral.client.reply_wire import feed
    except ImportError:

        def feed(session: Session, frames: list[bytes]) -> Any:
            return session.feed(frames)

    key = os.urandom(32).hex().encode()
    client, engine = Session(key), Session(key)
    records = Records()
    request_buffers = pack_apply_message(one, (), {})
    result = serialize_object(1)
    figures = []
    for _ in range(rounds):
        pending = []
        for _ in range(CALLS):
            request = client.msg("apply_request", {}, metadata={}, buffers=request_buffers)
            records.track(request, "task")
            held = AsyncResult(records, [request.msg_id], fname="one", single=True)
            metadata = {
                "started": request.header["date"],
                "completed": request.header["date"],
                "engine_uuid": "e",
                "engine_id": 0,
                "status": "ok",
                "dependencies_met": True,
                "is_broadcast": False,
                "stdout": "",
                "stderr": "",
            }
            reply = engine.msg(
                "apply_reply", {"status": "ok"}, parent=request, metadata=metadata, buffers=result
            )
            frames = [b"engine-uuid", *(bytes(frame_view(f)) for f in engine.serialize(reply))]
            pending.append((frames, held))
        start = time.thread_time()
        for frames, _ in pending:
            records.handle_reply(feed(client, frames))
        figures.append((time.thread_time() - start) / CALLS * 1e6)
        check(all(held.get(0) == 1 for _, held in pending), "every reply settled its result")
        del pending
    return {"reply: feed + handle_reply": statistics.median(figures)}


def submit_figures(rounds: int) -> dict[str, float]:
    """apply_async into a controller without engines (nothing answers)."""
    figures = []
    io_figures = []
    with corral_cluster(0) as running:
        client = running.client
        view = client.load_balanced_view()
        io_thread = client._io._io_thread
        check(io_thread is not None and io_thread.native_id is not None, "an I/O thread")
        assert io_thread is not None and io_thread.native_id is not None
        held = [view.apply_async(one) for _ in range(200)]  # warm-up
        for _ in range(rounds):
            io_before = _thread_cpu(io_thread.native_id)
            start = time.thread_time()
            for _ in range(CALLS):
                held.append(view.apply_async(one))
            figures.append((time.thread_time() - start) / CALLS * 1e6)
            client.queue_status()  # answered after the I/O thread sent every task before it
            io_figures.append((_thread_cpu(io_thread.native_id) - io_before) / CALLS * 1e6)
        check(not any(result.done() for result in held), "no engine: nothing answered")
        del held
    return {
        "submit: apply_async, calling thread": statistics.median(figures),
        "submit: I/O thread sending": statistics.median(io_figures),
    }


class CollectorClock:
    """Thread CPU seconds the cyclic collector takes on the thread that installs it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._thread = threading.get_ident()
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if threading.get_ident() != self._thread:
            return
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._started


def cluster_figures(tasks: int) -> dict[str, float]:
    """CPU per task of the client's two threads for no-ops one by one (see the module doc),
    and the apply round trip."""
    figures: dict[str, float] = {}
    with corral_cluster(2) as running:
        client = running.client
        io_thread = client._io._io_thread
        assert io_thread is not None and io_thread.native_id is not None
        balanced = client.load_balanced_view()
        direct = [client[0], client[1]]
        ways: dict[str, Callable[[int], list[Any]]] = {
            "lb": lambda count: [balanced.apply_async(one) for _ in range(count)],
            "direct": lambda count: [direct[i % 2].apply_async(one) for i in range(count)],
        }
        for name, submit in ways.items():
            check(sum(r.get(60) for r in submit(200)) == 200, "warm-up")
            clock = CollectorClock()
            gc.callbacks.append(clock)
            try:
                io_before = _thread_cpu(io_thread.native_id)
                start = time.thread_time()
                results = submit(tasks)
                check(sum(r.get(300) for r in results) == tasks, "every no-op answered")
                user = time.thread_time() - start
                io = _thread_cpu(io_thread.native_id) - io_before
            finally:
                gc.callbacks.remove(clock)
            del results
            figures[f"{name}: user's thread, per task"] = user / tasks * 1e6
            figures[f"{name}: of which the collector"] = clock.seconds / tasks * 1e6
            figures[f"{name}: I/O thread, per task"] = io / tasks * 1e6
        single = client[0]
        for _ in range(200):  # warm-up, before the threads' clocks are read
            single.apply_async(one).get(60)
        io_before = _thread_cpu(io_thread.native_id)
        user_before = time.thread_time()
        times = latency(lambda: single.apply_async(one).get(60), LATENCY_ROUNDS, warmup=0)
        user = time.thread_time() - user_before
        io = _thread_cpu(io_thread.native_id) - io_before
        figures["apply round trip, median"] = times["median_us"]
        figures["apply round trip, p99"] = times["p99_us"]
        figures["round trip: user's thread, per trip"] = user / LATENCY_ROUNDS * 1e6
        figures["round trip: I/O thread, per trip"] = io / LATENCY_ROUNDS * 1e6
    return figures


def _thread_cpu(native_id: int) -> float:
    """CPU seconds of a thread of this process, from /proc (user + system)."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--cluster", action="store_true", help="also the round trips")
    parser.add_argument("--tasks", type=int, default=TASKS, help="no-ops per round-trip run")
    parser.add_argument("--only-cluster", action="store_true", help="the round trips alone")
    args = parser.parse_args()
    origin = use_source(show=False)

    figures: dict[str, float] = {}
    if not args.only_cluster:
        figures.update(pack_figures(args.rounds))
        figures.update(reply_figures(args.rounds))
        figures.update(submit_figures(args.rounds))
    if args.cluster or args.only_cluster:
        figures.update(cluster_figures(args.tasks))
    print(f"corral from {origin}")
    for name, value in figures.items():
        print(f"{name:40s} {value:8.1f} us")
    write_results("client_path", {"figures_us": figures, "rounds": args.rounds, "calls": CALLS})


if __name__ == "__main__":
    main()
