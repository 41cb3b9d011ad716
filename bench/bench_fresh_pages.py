"""What a first touch of fresh memory costs on this machine, alone and beside idle clusters.

Every corral process grows while it works (the Hub's records and its store's file pages, the
scheduler's finished msg_ids, the client's results): about two fresh pages per load-balanced
no-op task in all (``bench_cpu_roles.py``'s minor page faults per task). What one costs is the
machine's, not corral's: on bare metal the kernel zeroes a page in a fraction of a
microsecond, but in a virtual machine whose host backs the guest's memory lazily (and takes
back what the guest frees, as free page reporting does) the first touch of a page is a fault
in the host too. In one sitting a first touch cost 6-10 us per page beside a 64-engine
cluster against 2.5 alone, and the Hub's kernel time per task at 64 engines was 6-15 us above
that at 4; in a later one both differences were gone (bench/README.md, round twenty-three).
This script puts a number on it, so that a run of the issue's table can be read against the
machine's state:

    PYTHONPATH=. .venv/bin/python bench/bench_fresh_pages.py --engines 4,64

For each case (alone, then beside an idle corral cluster of each ``--engines`` size) a fresh
child process maps ``--mib`` MiB, writes one byte per page, unmaps it, ``--rounds`` times:
microseconds per page, wall and system time, for its first round (pages new to the process)
and the median of the later ones (pages it has just freed, mostly).
"""

from __future__ import annotations

import argparse
import json
import mmap
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from common import check, corral_cluster, print_table, use_source, write_results

PAGE = mmap.PAGESIZE


def touch_rounds(mib: int, rounds: int) -> list[tuple[float, float]]:
    """(wall us, system us) per page of each round of mapping, touching and unmapping."""
    size = mib << 20
    found = []
    for _ in range(rounds):
        region = mmap.mmap(-1, size)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        start = time.perf_counter()
        for offset in range(0, size, PAGE):
            region[offset] = 1
        wall = time.perf_counter() - start
        system = resource.getrusage(resource.RUSAGE_SELF).ru_stime - before
        region.close()
        pages = size // PAGE
        found.append((1e6 * wall / pages, 1e6 * system / pages))
    return found


def measure_in_child(mib: int, rounds: int) -> list[tuple[float, float]]:
    """:func:`touch_rounds` in a new process (its pages are new to it)."""
    command = [sys.executable, __file__, "--child", "--mib", str(mib), "--rounds", str(rounds)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    return [(wall, system) for wall, system in json.loads(done.stdout)]


def summary(case: str, found: list[tuple[float, float]]) -> dict[str, Any]:
    later = found[1:] or found
    return {
        "case": case,
        "first_wall_us": found[0][0],
        "first_system_us": found[0][1],
        "later_wall_us": statistics.median(wall for wall, _ in later),
        "later_system_us": statistics.median(system for _, system in later),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="4,64", help="cluster sizes to measure beside")
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    check(args.mib > 0 and args.rounds > 0, "--mib and --rounds are positive")
    if args.child:
        print(json.dumps(touch_rounds(args.mib, args.rounds)))
        return
    use_source(show=False)
    sizes = [int(n) for n in args.engines.split(",") if n]
    rows = [summary("alone", measure_in_child(args.mib, args.rounds))]
    for engines in sizes:
        with corral_cluster(engines) as running:
            check(len(running.client.ids) == engines, "every engine registered")
            rows.append(
                summary(f"beside {engines} engines", measure_in_child(args.mib, args.rounds))
            )
        check(not running.leftovers, f"the cluster left {running.leftovers}")
    print_table(
        f"first touch of fresh anonymous memory, {args.mib} MiB x {args.rounds}, us per page",
        ["case", "first: wall", "first: system", "later: wall", "later: system"],
        [
            [
                row["case"],
                row["first_wall_us"],
                row["first_system_us"],
                row["later_wall_us"],
                row["later_system_us"],
            ]
            for row in rows
        ],
    )
    write_results("fresh_pages", {"mib": args.mib, "rounds": args.rounds, "cases": rows})


if __name__ == "__main__":
    main()
