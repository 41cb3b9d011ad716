"""`make demo`: a local cluster on the default settings, a real parallel computation, timings.

Estimates pi by Monte Carlo on every engine, runs a load-balanced map with a dependency chain,
pushes and pulls a large array, and shows a result fetched back from the Hub's SQLite store.
"""

from __future__ import annotations

import importlib.util
import os
import time

import corral


def sample_pi(n: int) -> int:
    """Count random points of the unit square that fall inside the quarter circle."""
    import random

    rng = random.Random()
    return sum(1 for _ in range(n) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)


def collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def main() -> None:
    engines = max(2, min(4, os.cpu_count() or 2))
    started = time.perf_counter()
    cluster = corral.Cluster(n=engines)  # temporary: its folder goes when it stops
    print(f"starting a controller and {engines} engines (cluster folder {cluster.path}) ...")
    with cluster as rc:
        print(f"  all {len(rc.ids)} engines registered in {time.perf_counter() - started:.2f} s")
        dv = rc[:]

        t = time.perf_counter()
        per_engine = 400_000
        hits = dv.apply_sync(sample_pi, per_engine)
        pi = 4 * sum(hits) / (per_engine * len(hits))
        print(
            f"pi ~ {pi:.5f} from {per_engine * len(hits):,} samples on {len(hits)} engines "
            f"({time.perf_counter() - t:.2f} s)"
        )

        lview = rc.load_balanced_view()
        t = time.perf_counter()
        steps = lview.map_sync(collatz_steps, range(1, 20_001), chunksize=500)
        longest = max(range(len(steps)), key=steps.__getitem__) + 1
        print(
            f"collatz: longest chain below 20,000 starts at {longest} ({steps[longest - 1]} "
            f"steps); 40 load-balanced chunks in {time.perf_counter() - t:.2f} s"
        )

        t = time.perf_counter()
        first = lview.apply_async(sum, range(1000))
        with lview.temp_flags(after=[first]):
            chained = lview.apply_async(lambda: "ran after the first task")
        print(
            f"dependency: first={first.get()} then {chained.get()!r} "
            f"({time.perf_counter() - t:.3f} s)"
        )

        if importlib.util.find_spec("numpy") is not None:
            import numpy as np

            array = np.random.default_rng(0).random(12_500_000)  # 100 MB
            t = time.perf_counter()
            dv.push({"block": array}, block=True)
            back = rc[rc.ids[0]].pull("block", block=True)
            elapsed = time.perf_counter() - t
            same = bool(np.array_equal(back, array))
            print(
                f"push 100 MB to {len(dv.targets)} engines and pull it back: {elapsed:.2f} s, "
                f"bit-exact: {same}"
            )

        t = time.perf_counter()
        n_tasks = 2000
        results = [lview.apply_async(abs, -i) for i in range(n_tasks)]
        total = sum(r.get() for r in results)
        rate = n_tasks / (time.perf_counter() - t)
        print(f"{n_tasks} tiny load-balanced tasks: {rate:,.0f} tasks/s (sum {total})")

        fetched = rc.get_result(results[0].msg_ids[0]).get()
        print(f"result fetched back from the Hub's store: {fetched}")
        print(f"queue status: {rc.queue_status()}")
    left = "left in place" if cluster.path.exists() else "removed"
    print(f"cluster stopped, its folder {left}; total {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
