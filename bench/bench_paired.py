"""Two corral clusters side by side, round trips on each in alternating blocks: a before/after
of one setting that holds while other work shares the machine.

Wall-clock figures from runs one after the other swing by 100 us and more per round trip on
this 2-core machine when others run there (bench/README.md, rounds nine and ten): a run lands
in a fast or a slow phase of the machine, and a few sequential pairs can show a gain or a loss
that is not there. Here both clusters live at once, each with one engine, and the script runs
``--rounds`` direct no-op round trips (``view.apply_async(one).get()``) on A, then on B (then
B, A in the next block), ``--blocks`` times, so that both see the same phases. It prints each
side's median of block medians and all round trips' median, p90 and p99, in how many blocks
B was faster, and the median per-block difference (A - B).

A and B differ by the controller flags ``--a-args`` / ``--b-args`` and by environment
variables set while each cluster starts (``--a-env`` / ``--b-env``, ``NAME=VALUE``, for an
experiment a tree reads from the environment). The cluster started first has been slower in
some runs: ``--b-first`` starts B first; run both orders::

    PYTHONPATH=$PWD .venv/bin/python bench/bench_paired.py --b-args="--hub-nice 19"
    PYTHONPATH=$PWD .venv/bin/python bench/bench_paired.py --b-args="--hub-nice 19" --b-first

``--a-mux``: A's round trips go through the controller's MUX device, from a second client made
with ``Client(direct=False)`` (issue 13, round eleven: the direct path against the MUX on the
same tree); B's client sends them straight to the engine when it can.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from common import check, corral_cluster, print_table, restore_environment, use_source

TIMEOUT = 60.0
WARMUP = 300


def one() -> int:
    return 1


@contextmanager
def environment(assignments: list[str]) -> Iterator[None]:
    """``NAME=VALUE`` set for the block (the cluster's processes inherit them as they start)."""
    before = {}
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        before[name] = os.environ.get(name)
        os.environ[name] = value
    try:
        yield
    finally:
        restore_environment(before)


def block(view: Any, rounds: int) -> list[float]:
    spans = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        began = clock()
        view.apply_async(one).get(TIMEOUT)
        spans.append((clock() - began) / 1000)
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=250, help="round trips per block")
    parser.add_argument("--a-args", default="", help="controller flags of A")
    parser.add_argument("--b-args", default="", help="controller flags of B")
    parser.add_argument("--a-env", action="append", default=[], help="NAME=VALUE for A")
    parser.add_argument("--b-env", action="append", default=[], help="NAME=VALUE for B")
    parser.add_argument("--b-first", action="store_true", help="start B's cluster first")
    parser.add_argument(
        "--a-mux", action="store_true", help="A's client keeps the MUX: Client(direct=False)"
    )
    args = parser.parse_args()
    use_source()
    sides = {
        "A": (shlex.split(args.a_args), args.a_env),
        "B": (shlex.split(args.b_args), args.b_env),
    }
    order = ["B", "A"] if args.b_first else ["A", "B"]
    views: dict[str, Any] = {}
    with ExitStack() as stack:
        for side in order:
            controller_args, assignments = sides[side]
            with environment(assignments):
                running = stack.enter_context(corral_cluster(1, controller_args=controller_args))
            client = running.client
            if side == "A" and args.a_mux:
                import corral

                client = stack.enter_context(
                    corral.Client(
                        connection_file=running.cluster.path / "corral-client.json", direct=False
                    )
                )
            client.wait_for_engines(1, timeout=TIMEOUT)
            views[side] = client[client.ids[0]]
            check(views[side].apply_async(one).get(TIMEOUT) == 1, f"a no-op on {side}")
            block(views[side], WARMUP)
        medians: dict[str, list[float]] = {"A": [], "B": []}
        spans: dict[str, list[float]] = {"A": [], "B": []}
        for number in range(args.blocks):
            for side in ("A", "B") if number % 2 == 0 else ("B", "A"):
                found = block(views[side], args.rounds)
                medians[side].append(statistics.median(found))
                spans[side] += found
    rows = []
    for side in ("A", "B"):
        ordered = sorted(spans[side])
        rows.append(
            [
                f"{side}: {args.a_args if side == 'A' else args.b_args} "
                + " ".join(sides[side][1])
                + (" (MUX)" if side == "A" and args.a_mux else ""),
                statistics.median(medians[side]),
                statistics.median(ordered),
                ordered[int(len(ordered) * 0.9)],
                ordered[int(len(ordered) * 0.99)],
            ]
        )
    print_table(
        f"{args.blocks} blocks of {args.rounds} direct no-op round trips on each, us; "
        f"{'B' if args.b_first else 'A'} started first; load {os.getloadavg()[0]:.1f}",
        ["side", "block medians", "median", "p90", "p99"],
        rows,
    )
    faster = sum(1 for a, b in zip(medians["A"], medians["B"], strict=True) if b < a)
    difference = statistics.median(a - b for a, b in zip(medians["A"], medians["B"], strict=True))
    print(f"B faster in {faster} of {args.blocks} blocks; per-block A - B: {difference:.0f} us")


if __name__ == "__main__":
    main()
