"""Mixed chaos: every kind of call while engines and the controller are SIGKILLed.

A supervised cluster (dead processes restarted, the controller with ``--restore``) gets
``--rounds`` calls, each chosen at random (seeded): a direct apply of a small array or of one
above the shared-memory threshold (2.4 MB), a push then a pull of a small or a 4 MB array, a
load-balanced map with ``retries=2``, and a second client's ``get_result`` of a task (direct or
one of a map) the first one finished. Meanwhile a seeded thread SIGKILLs an engine every 0.5-3
s, and one time in seven the controller instead. Every wait is bounded (``--wait`` seconds).

Expected, and counted but not a fault: an EngineError (the engine died with the task), an
InvalidTarget (the engine table changed between reading it and sending), a pull that finds
the name gone (its engine was restarted), a ResultNotStored (the task's engine died while the
controller was down: only the client that submitted it got the value, and the Hub records it
answered from that client's report), a ResultPurged (the store's size limit, 2 GiB, purged the
oldest records: the cluster keeps buffers up to 1 MB only, ``STORE_BUFFERS``, so that a
long run does not reach it). A ``get_result`` that finds no record yet ("no such msg_id":
that report comes once the restarted Hub has announced the engine's end) is asked again once
the kills have stopped, and is a fault only if the record never comes. A fault: a call that
did not end within the bound (a hang), a wrong value, any other error, a reply whose
shared-memory buffers were refused, or a process left behind. It found four (see
bench/README.md, rounds twenty-nine to thirty-two): a Hub query the killed controller took
with it failed after the client's whole timeout, late duplicate replies logged "refused the
buffers", a direct task answered while the controller was down, its engine killed then, was
never recorded (seed 21), and nor was one whose engine died before the Hub read its copy
when the client kept no AsyncResult of it (seeds 34 and 35).

    .venv/bin/python bench/chaos_mixed.py --rounds 1500 --seed 4

Prints a JSON summary (``--json`` writes it too); exit status 0 only without a fault.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from chaos import kill_leftovers, remove_base_dir, supervised_cluster  # noqa: E402  (bench/, beside it)

from corral import Client, Cluster  # noqa: E402
from corral.errors import EngineError, QueryError, TimeoutError  # noqa: E402
from corral.protocol.connection_files import CLIENT_FILE  # noqa: E402

#: what a call may end with while processes die, and is not a fault
EXPECTED = {
    "EngineError",
    "InvalidTarget",
    "NoEnginesRegistered",
    "RemoteError",
    "ResultNotStored",
    "ResultPurged",
}
#: the store's per-task buffer limit: the 2.4 MB direct arrays and the 4.8 MB pushes and
#: pulls are recorded without their buffers (at 4M the arrays alone filled the 2 GiB store
#: in two minutes of a long run, seed 32)
STORE_BUFFERS = "1M"
#: what a get_result says of a task its Hub has no record of (yet)
NOT_RECORDED = "no such msg_id"
#: seconds a task found unrecorded during the run has to be recorded once the kills stopped
#: (a restarted Hub awaits a lost engine its reregistration grace, 15 s, before its end is
#: announced and the task's client reports it)
RECORD_WITHIN = 60.0
BIG = 300_000  # float64 items: 2.4 MB, above the shared-memory threshold
#: seconds a run with ``--until-kills`` may go on for them
UNTIL_KILLS_WITHIN = 120.0
OPERATIONS = ("direct", "direct_big", "push_pull", "balanced", "get_result")


def scaled_sum(values: Any, factor: float) -> float:
    import numpy

    return float(numpy.asarray(values).sum()) * factor


def double(x: int) -> int:
    return 2 * x


class Killer(threading.Thread):
    """SIGKILLs an engine every 0.5-3 s (seeded), or one time in seven the controller."""

    def __init__(self, cluster: Cluster, seed: int) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.kills: Counter[str] = Counter()

    def run(self) -> None:
        while not self.stop_event.wait(self.rng.uniform(0.5, 3.0)):
            if self.rng.random() < 1 / 7:
                victim = self.cluster.controller
                role = "controller"
            else:
                alive = [p for p in self.cluster.engines if p.poll() is None]
                victim = self.rng.choice(alive) if alive else None
                role = "engine"
            if victim is not None and victim.poll() is None:
                try:
                    os.kill(victim.pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.kills[role] += 1


class RefusedBuffers(logging.Handler):
    """Counts the client's "refused the buffers" warnings: a reply whose data was lost."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "refused the buffers" in record.getMessage():
            self.count += 1


class Run:
    """The calls of one run and what they ended with."""

    def __init__(self, rc: Client, path: Path, seed: int, wait: float) -> None:
        self.rc = rc
        self.path = path
        self.rng = random.Random(seed)
        self.wait = wait
        self.outcomes: Counter[str] = Counter()
        self.faults: list[str] = []
        self.finished: dict[str, Any] = {}  # msg_id -> its value, for get_result
        self.other: Client | None = None
        self.unrecorded: set[str] = set()  # get_result found no record of these (yet)

    def settle(self, result: Any, what: str) -> tuple[bool, Any]:
        """(True, value) or (False, None), counting how it ended."""
        try:
            value = result.get(timeout=self.wait)
        except TimeoutError as err:
            self.faults.append(f"hang: {what}: {err}")
            self.outcomes["hang"] += 1
            return False, None
        except Exception as err:  # noqa: BLE001 - every kind is counted
            name = type(err).__name__
            self.outcomes[f"error:{name}"] += 1
            if name not in EXPECTED:
                self.faults.append(f"{what}: {name}: {str(err)[:300]}")
            return False, None
        return True, value

    def check(self, ok: bool, good: bool, what: str, value: Any) -> None:
        if ok and not good:
            self.faults.append(f"wrong value: {what}: {str(value)[:200]}")
            self.outcomes["wrong"] += 1
        elif ok:
            self.outcomes["ok"] += 1

    def one(self, index: int) -> None:
        operation = self.rng.choice(OPERATIONS)
        ids = self.rc.ids
        if not ids:
            self.outcomes["no engines"] += 1
            time.sleep(0.2)  # the engines are being restarted: nothing to send to yet
            return
        engine = self.rng.choice(ids)
        try:
            getattr(self, operation)(index, engine)
        except Exception as err:  # noqa: BLE001 - a submission refused
            name = type(err).__name__
            self.outcomes[f"refused:{name}"] += 1
            if name not in EXPECTED:
                self.faults.append(f"{operation}: {name}: {str(err)[:300]}")

    def direct(self, index: int, engine: int, size: int = 1000) -> None:
        values = np.arange(size, dtype=np.float64)
        expected = float(values.sum()) * 3
        result = self.rc[engine].apply_async(scaled_sum, values, 3)
        ok, value = self.settle(result, f"apply of {size} items on engine {engine}")
        self.check(ok, value == expected, "apply", value)
        if ok and value == expected:
            self.finished[result.msg_ids[0]] = expected

    def direct_big(self, index: int, engine: int) -> None:
        self.direct(index, engine, BIG)

    def push_pull(self, index: int, engine: int) -> None:
        values = np.arange(self.rng.choice([10, 2 * BIG]), dtype=np.float64) + index
        self.settle(self.rc[engine].push({"x": values}, block=False), f"push to {engine}")
        ok, value = self.settle(self.rc[engine].pull("x", block=False), f"pull from {engine}")
        if ok:  # a restarted engine between the two has no x: a RemoteError, counted
            good = isinstance(value, np.ndarray) and np.array_equal(value, values)
            self.check(ok, good, "pull", value)

    def balanced(self, index: int, engine: int) -> None:
        view = self.rc.load_balanced_view(retries=2)
        sent = view.map_async(double, range(20), chunksize=1)
        ok, value = self.settle(sent, "map")
        self.check(ok, ok and list(value) == [2 * x for x in range(20)], "map", value)
        if ok:  # another client's get_result of one of them must find it too
            for x, msg_id in enumerate(sent.msg_ids):
                self.finished[msg_id] = [2 * x]

    def get_result(self, index: int, engine: int) -> None:
        if not self.finished:
            return
        if self.other is None:
            self.other = Client(connection_file=self.path / CLIENT_FILE, timeout=60)
            self.other.outage_grace = 60.0
        msg_id, expected = self.rng.choice(list(self.finished.items()))
        result = self.other.get_result(msg_id, block=False)
        try:
            result.get(timeout=self.wait)
        except QueryError as err:
            if type(err) is QueryError and NOT_RECORDED in str(err):
                self.outcomes["not recorded yet"] += 1
                self.unrecorded.add(msg_id)  # asked again at the end
                return
        except EngineError:
            # this client got the value: the record says failed only until the client's
            # report of the engine's end replaces the failure (asked again at the end)
            self.outcomes["recorded failed yet"] += 1
            self.unrecorded.add(msg_id)
            return
        except Exception:  # noqa: BLE001, S110 - settle() below counts it
            pass
        ok, value = self.settle(result, f"another client's get_result of {msg_id}")
        self.check(ok, value == expected, "get_result", value)

    def check_unrecorded(self) -> None:
        """(The kills stopped.) Every task a get_result found unrecorded, or recorded failed
        although this client got its value, must be recorded answered within
        ``RECORD_WITHIN`` seconds: with its value, or without it (ResultNotStored); still
        unknown or failed then is a fault."""
        if not self.unrecorded or self.other is None:
            return
        deadline = time.monotonic() + RECORD_WITHIN
        left = set(self.unrecorded)
        last: dict[str, str] = {}  # what the latest get_result of each said
        while left and time.monotonic() < deadline:
            for msg_id in sorted(left):
                try:
                    self.other.get_result(msg_id, block=False).get(timeout=self.wait)
                except QueryError as err:
                    if type(err) is QueryError and NOT_RECORDED in str(err):
                        last[msg_id] = "never recorded"
                        continue
                except EngineError:
                    last[msg_id] = "recorded failed, although its client got the value"
                    continue
                except Exception:  # noqa: BLE001, S110 - answered without its value, say
                    pass
                left.discard(msg_id)
            if left:
                time.sleep(1.0)
        for msg_id in sorted(left):
            self.faults.append(f"{last[msg_id]}: {msg_id} ({RECORD_WITHIN:.0f} s after the kills)")


def run(
    rounds: int,
    engines: int,
    seed: int,
    wait: float,
    seconds: float | None = None,
    until_kills: int = 0,
) -> dict[str, Any]:
    """``rounds`` calls, or as many as ``seconds`` allow (then the summary says how many):
    a run's pace is set by its outages, each a restart's delay, more than by its calls.
    With ``until_kills``, calls go on after ``rounds`` until that many engines were killed
    (within ``seconds``, or ``UNTIL_KILLS_WITHIN``): on a fast machine a short run could
    otherwise end before the first kill (400 rounds took 2.5 s, the first kill comes after
    0.5-3 s), and test nothing."""
    # the large arrays are recorded without their buffers, so that a long run stays under
    # the store's size limit (2 GiB): a record missing then is lost, not purged
    cluster = supervised_cluster(engines, "corral-chaos-mixed-", store_buffer_limit=STORE_BUFFERS)
    refused = RefusedBuffers()
    logging.getLogger("corral.client").addHandler(refused)
    started = time.monotonic()
    rc = cluster.start()
    rc.outage_grace = 60.0
    killer = Killer(cluster, seed * 7 + 1)
    calls = Run(rc, cluster.path, seed, wait)
    restarts: dict[str, int] = {}
    done = 0
    try:
        rc.wait_for_engines(engines, timeout=60)
        killer.start()
        stop_at = None if seconds is None else started + seconds
        if until_kills and stop_at is None:
            stop_at = started + UNTIL_KILLS_WITHIN
        index = 0
        while index < rounds or killer.kills["engine"] < until_kills:
            if stop_at is not None and time.monotonic() >= stop_at:
                break
            calls.one(index)
            index = done = index + 1
    finally:
        killer.stop_event.set()
        killer.join(10)
        calls.check_unrecorded()
        if calls.other is not None:
            calls.other.close()
        restarts = dict(cluster.restarts)
        cluster.stop()
        remove_base_dir(cluster)
        logging.getLogger("corral.client").removeHandler(refused)
    left_behind = kill_leftovers()
    faults = list(calls.faults)
    if refused.count:
        faults.append(f"{refused.count} replies' shared-memory buffers refused")
    return {
        "rounds": done,
        "engines": engines,
        "seed": seed,
        "elapsed_s": round(time.monotonic() - started, 1),
        "outcomes": dict(calls.outcomes),
        "kills": dict(killer.kills),
        "restarts": restarts,
        "faults": faults[:40],
        "fault_count": len(faults),
        "left_behind": left_behind,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1500)
    parser.add_argument(
        "--seconds", type=float, default=None, help="stop issuing calls after this long"
    )
    parser.add_argument("--engines", type=int, default=3)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--wait", type=float, default=90.0, help="bound on each call, seconds")
    parser.add_argument(
        "--until-kills",
        type=int,
        default=0,
        help="after --rounds, go on until this many engines were killed",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    summary = run(args.rounds, args.engines, args.seed, args.wait, args.seconds, args.until_kills)
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if not summary["fault_count"] and not summary["left_behind"] else 1


if __name__ == "__main__":
    sys.exit(main())
