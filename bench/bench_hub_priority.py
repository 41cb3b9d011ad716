"""Both sides of the Hub's lower CPU priority (``corral controller --hub-nice``).

What it buys: the Hub records a copy of each request and reply at the moment the data path
needs the cores, so with the Hub's threads at the same priority a round trip waits for its
bookkeeping. What it costs: when every core is busy with other work, a query the Hub answers
(``queue_status``) waits longer for a core. For each ``--nice`` value (default ``0,10``: the
same priority, and the default), in rotation, ``--repeats`` times, a fresh 2-engine cluster:

- the apply round trip of a no-op on one engine (median, p90, p99 of ``--rounds`` calls);
- load-balanced no-ops per second (``--tasks`` submitted one by one, then awaited);
- ``queue_status()`` latency while the engines run a busy loop and ``--hogs`` more busy
  processes oversubscribe the cores (median, p90, max of what fits in ``--busy`` seconds),
  with a check that no engine was declared dead meanwhile::

    PYTHONPATH=. .bench-venv/bin/python bench/bench_hub_priority.py --repeats 3

Another corral tree (a baseline from ``git archive``) is measured with
``CORRAL_BENCH_SOURCE=DIR PYTHONPATH=DIR``, run from an empty folder (it must know the flag).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from typing import Any

from common import check, collect, corral_cluster, latency, print_table, use_source

TIMEOUT = 120.0
HOG = "while True: pass"


def one() -> int:
    return 1


def burn(seconds: float) -> int:
    """A busy loop on the engine (user code holding a core)."""
    import time

    end = time.monotonic() + seconds
    turns = 0
    while time.monotonic() < end:
        turns += 1
    return turns


def measure(nice: int, args: argparse.Namespace) -> dict[str, Any]:
    with corral_cluster(2, controller_args=["--hub-nice", str(nice)]) as running:
        client = running.client
        view = client[client.ids[0]]
        found: dict[str, Any] = {"nice": nice}
        found.update(latency(lambda: view.apply_async(one).get(TIMEOUT), args.rounds, 200))
        balanced = client.load_balanced_view()
        start = time.perf_counter()
        results = [balanced.apply_async(one) for _ in range(args.tasks)]
        check(collect(results, lambda r, t: r.get(t), TIMEOUT) == [1] * args.tasks, "LB no-ops")
        found["lb_per_s"] = args.tasks / (time.perf_counter() - start)

        engines = list(client.ids)
        hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)]
        try:
            busy = [client[i].apply_async(burn, args.busy) for i in engines]
            times = []
            until = time.monotonic() + args.busy * 0.9
            while time.monotonic() < until:
                began = time.perf_counter()
                client.queue_status()
                times.append(time.perf_counter() - began)
                time.sleep(0.05)  # a user asking now and then, not a loop hammering the Hub
            check(all(r.get(TIMEOUT) > 0 for r in busy), "busy loops ran")
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        check(list(client.ids) == engines, "no engine declared dead while the cores were busy")
        times.sort()
        found["query_median_ms"] = statistics.median(times) * 1e3
        found["query_p90_ms"] = times[int(len(times) * 0.9)] * 1e3
        found["query_max_ms"] = times[-1] * 1e3
        return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nice", default="0,10", help="--hub-nice values, in rotation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2000, help="apply round trips")
    parser.add_argument("--tasks", type=int, default=10000, help="load-balanced no-ops")
    parser.add_argument("--busy", type=float, default=10.0, help="seconds of busy engines")
    parser.add_argument("--hogs", type=int, default=2, help="busy processes besides engines")
    args = parser.parse_args()
    use_source()
    values = [int(value) for value in args.nice.split(",")]
    rows = []
    for repeat in range(args.repeats):
        for nice in values:
            found = measure(nice, args)
            print(f"repeat {repeat + 1}: {found}", flush=True)
            rows.append(
                [
                    f"--hub-nice {nice}",
                    found["median_us"],
                    found["p90_us"],
                    found["p99_us"],
                    found["lb_per_s"],
                    found["query_median_ms"],
                    found["query_p90_ms"],
                    found["query_max_ms"],
                ]
            )
    print_table(
        "Hub priority: apply round trip (us), LB no-ops/s, queue_status on busy cores (ms)",
        ["run", "apply med", "p90", "p99", "LB/s", "query med", "p90", "max"],
        rows,
    )


if __name__ == "__main__":
    main()
