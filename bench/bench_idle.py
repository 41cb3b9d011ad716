"""What an idle corral cluster costs: CPU seconds per role while nothing is submitted.

Starts a cluster of ``--engines`` engines (64 by default: on two cores, what one idle engine
costs is multiplied by them, and it is taken from every task when the cluster works), waits
for it to settle, and reads every process's CPU time over ``--seconds``, summed by role
(engines, Hub, scheduler) and as a share of one core::

    PYTHONPATH=. .bench-venv/bin/python bench/bench_idle.py --engines 64

Another corral tree (a baseline from ``git archive``) is measured with
``CORRAL_BENCH_SOURCE=DIR PYTHONPATH=DIR``, run from an empty folder.
"""

from __future__ import annotations

import argparse
import time

import psutil
from bench_cpu_roles import roles
from common import check, corral_cluster, use_source

SETTLE = 2.0  # seconds after the engines registered, before measuring


def cpu_by_pid(processes: list[psutil.Process]) -> dict[int, float]:
    found = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        found[process.pid] = times.user + times.system
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    use_source(show=False)
    with corral_cluster(args.engines) as running:
        check(len(running.client.ids) == args.engines, "every engine registered")
        by_role = {role: found for role, found in roles(running).items() if role != "client"}
        processes = [process for found in by_role.values() for process in found]
        time.sleep(SETTLE)  # a pause in an idle cluster: nothing to wait for
        before = cpu_by_pid(processes)
        time.sleep(args.seconds)
        after = cpu_by_pid(processes)
    print(f"idle corral cluster, {args.engines} engines, {args.seconds:g} s:")
    total = 0.0
    for role, found in by_role.items():
        measured = [p.pid for p in found if p.pid in before and p.pid in after]
        spent = sum(after[pid] - before[pid] for pid in measured)
        total += spent
        print(f"  {role:<10} {spent:6.2f} CPU s  ({100 * spent / args.seconds:5.1f}% of a core)")
    print(f"  {'all':<10} {total:6.2f} CPU s  ({100 * total / args.seconds:5.1f}% of a core)")


if __name__ == "__main__":
    main()
