"""How long a thread waiting for a result takes to run again once another thread settles it.

``AsyncResult.get()`` sleeps until the client's I/O thread settles the result (issue 13,
round nine: "settled until get() returned", about 23 us of a direct round trip). This
measures the wake-up alone, in one process without sockets: a waiting thread sleeps on

- **lock**: a bare ``_thread`` lock, acquired again (what ``LightFuture`` does,
  corral.client.requestfuture);
- **event**: a ``threading.Event`` (``wait``/``set``);
- **condition**: a ``threading.Condition`` (``wait``/``notify_all``), what
  ``concurrent.futures.Future`` uses;

and the waking thread, like the I/O thread after it settled a reply, keeps running Python
for ``--busy`` microseconds (holding the GIL) before it blocks. The figure is the median
time from the wake to the waiting thread running again, over ``--rounds`` wake-ups::

    PYTHONPATH=. .bench-venv/bin/python bench/bench_wake.py
"""

from __future__ import annotations

import _thread
import argparse
import statistics
import threading
import time
from collections.abc import Callable

from common import print_table, write_results

ROUNDS = 2000
BUSY = (0, 10, 30)


def spin(microseconds: float) -> None:
    """Run Python, GIL held, for ``microseconds`` (the waking thread's work after the wake)."""
    end = time.perf_counter_ns() + int(microseconds * 1000)
    while time.perf_counter_ns() < end:
        pass


def sleeper_lock() -> tuple[Callable[[], object], Callable[[], object]]:
    lock = _thread.allocate_lock()
    lock.acquire()
    return lock.acquire, lock.release


def sleeper_event() -> tuple[Callable[[], object], Callable[[], object]]:
    event = threading.Event()
    return event.wait, event.set


def sleeper_condition() -> tuple[Callable[[], object], Callable[[], object]]:
    condition = threading.Condition()
    woken = False

    def wait() -> None:
        with condition:
            while not woken:
                condition.wait()

    def wake() -> None:
        nonlocal woken
        with condition:
            woken = True
            condition.notify_all()

    return wait, wake


KINDS = {"lock": sleeper_lock, "event": sleeper_event, "condition": sleeper_condition}


def wake_latency(kind: str, busy: float, rounds: int) -> float:
    """Median microseconds from the wake to the waiting thread running again."""
    make = KINDS[kind]
    latencies: list[int] = []
    handed: list[Callable[[], object]] = []
    woken_at = [0]
    asleep = threading.Semaphore(0)
    back = threading.Semaphore(0)

    def waiter() -> None:
        for _ in range(rounds):
            wait, wake = make()
            handed.append(wake)
            asleep.release()
            wait()
            latencies.append(time.perf_counter_ns() - woken_at[0])
            back.release()

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        for _ in range(rounds):
            asleep.acquire()
            time.sleep(0.0001)  # workload pacing: the waiter is asleep in wait() by then
            wake = handed.pop()
            woken_at[0] = time.perf_counter_ns()
            wake()
            spin(busy)
            back.acquire()
    finally:
        thread.join(60)
    return statistics.median(latencies) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--busy", type=float, nargs="*", default=list(BUSY))
    options = parser.parse_args()
    figures = {
        f"busy {busy:g} us": {kind: wake_latency(kind, busy, options.rounds) for kind in KINDS}
        for busy in options.busy
    }
    rows = [[label, *values.values()] for label, values in figures.items()]
    print_table("wake-up of a waiting thread, median us", ["waker after the wake", *KINDS], rows)
    write_results("wake", {"rounds": options.rounds, "figures": figures})


if __name__ == "__main__":
    main()
