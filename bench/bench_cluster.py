"""A working cluster, beside ipyparallel 9.2 and dask.distributed, in one run:

1. latency: median round trip of a no-op applied on one engine (1000 calls, one at a time);
2. direct throughput: 5000 no-op tasks round-robin over every engine, all submitted, then
   all awaited;
3. push and pull of a 100 MB numpy array to and from one engine, as MB/s, beside raw pyzmq
   for the same bytes (a PAIR over tcp loopback in one process, copy=False: the target; and
   through a C proxy to another process, which is the topology of a corral push) and a plain
   TCP socket (what the kernel moves without zmq);
4. start-up: from nothing to a client that sees all N engines (and the time to stop).

corral runs twice: with its default SQLite result store and with ``db="memory"``, because the
Hub records every reply (with its buffers) and on 2 cores that work competes with the data path.
Beside the peers, the floor: a raw pyzmq round trip to an echo process, directly and through a
C proxy process (client -> queue -> engine is corral's MUX path).

The no-op returns 1 and every figure is checked (sums, array equality) so that no broken path
is measured. The machine has 2 cores: N = 2 engines.
Run: `.bench-venv/bin/python bench/bench_cluster.py` (about 3 minutes).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import statistics
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import zmq
from common import (
    QUIET_WAIT,
    LostResults,
    Running,
    check,
    collect,
    corral_cluster,
    dask_cluster,
    dask_workers,
    diagnose_hangs,
    final_process_check,
    ipyparallel_cluster,
    latency,
    machine_load,
    print_table,
    timed,
    verdict,
    write_results,
)

ENGINES = 2
LATENCY_ROUNDS = 1000
THROUGHPUT_TASKS = 5000
ARRAY_MB = 100
BIG_ROUNDS = 5
STARTUP_REPEATS = 3
SMALL_REQUEST = [b"<IDS|MSG>", b"0" * 64, b"{" + b"h" * 200 + b"}", b"{}", b"{}", b"{}", b"p" * 300]

TIMEOUT = 60.0  # seconds for any one result: beyond that a message was lost

ClusterFactory = Callable[[int], AbstractContextManager[Running]]
FRAMEWORKS: dict[str, ClusterFactory] = {
    "corral": corral_cluster,
    "corral (db=memory)": partial(corral_cluster, db="memory"),
    "ipyparallel": ipyparallel_cluster,
    "dask": dask_cluster,
}
STARTUP = {name: FRAMEWORKS[name] for name in ("corral", "ipyparallel", "dask")}
# start-up waits for the Hub's first heartbeat round: shown with a short period beside it
STARTUP_VARIANTS: dict[str, ClusterFactory] = {
    "corral (heartbeat_period=0.1)": partial(corral_cluster, heartbeat_period=0.1),
}


def one() -> int:
    """The "no-op" task: returns 1, so that summing the results proves every task ran."""
    return 1


def make_array() -> np.ndarray:
    return np.random.default_rng(0).random(ARRAY_MB * 1_000_000 // 8)


# ---------------------------------------------------------------- raw pyzmq floor


def _proxy_process(conn: Connection) -> None:
    """ROUTER <-> DEALER C proxy (what a MUX queue is, minus the monitor), until killed."""
    context = zmq.Context()
    front, back = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    ports = (
        front.bind_to_random_port("tcp://127.0.0.1"),
        back.bind_to_random_port("tcp://127.0.0.1"),
    )
    conn.send(ports)
    zmq.proxy(front, back)


def _echo_process(conn: Connection, connect_to: str | None) -> None:
    """REP: echo small messages; keep a big one ("push") and answer "ok"; answer "pull" with
    the big one kept; stop on "stop"."""
    context = zmq.Context()
    sock = context.socket(zmq.REP)
    if connect_to is None:
        conn.send(sock.bind_to_random_port("tcp://127.0.0.1"))
    else:
        sock.connect(connect_to)
        conn.send(None)
    kept: list[Any] = []
    while True:
        frames = sock.recv_multipart(copy=False)
        first = frames[0].bytes if len(frames[0]) < 16 else b""
        if first == b"stop":
            sock.send(b"bye")
            break
        if first == b"pull":
            sock.send_multipart(kept, copy=False)
        elif len(frames) == 1 and len(frames[0]) > 1_000_000:
            kept = [np.frombuffer(frames[0].buffer, dtype=np.float64)]
            sock.send(b"ok")
        else:
            sock.send_multipart(frames, copy=False)
    sock.close(linger=0)
    context.term()


@contextmanager
def raw_peer(via_proxy: bool) -> Iterator[zmq.Socket[Any]]:
    """A REQ socket talking to an echo process, directly or through a C proxy process."""
    spawn = multiprocessing.get_context("spawn")
    processes = []
    context = zmq.Context()
    req = context.socket(zmq.REQ)
    req.linger = 0
    try:
        if via_proxy:
            parent, child = spawn.Pipe()
            proxy = spawn.Process(target=_proxy_process, args=(child,), daemon=True)
            proxy.start()
            processes.append(proxy)
            front, back = parent.recv()
            echo = spawn.Process(
                target=_echo_process, args=(child, f"tcp://127.0.0.1:{back}"), daemon=True
            )
            echo.start()
            processes.append(echo)
            parent.recv()
            req.connect(f"tcp://127.0.0.1:{front}")
        else:
            parent, child = spawn.Pipe()
            echo = spawn.Process(target=_echo_process, args=(child, None), daemon=True)
            echo.start()
            processes.append(echo)
            req.connect(f"tcp://127.0.0.1:{parent.recv()}")
        yield req
        req.send(b"stop")
        req.recv()
    finally:
        req.close()
        context.term()
        for process in processes:
            process.join(2)
            if process.is_alive():
                process.terminate()
                process.join(5)


def raw_latency(via_proxy: bool) -> dict[str, float]:
    with raw_peer(via_proxy) as req:

        def round_trip() -> object:
            req.send_multipart(SMALL_REQUEST, copy=False)
            return req.recv_multipart(copy=False)

        return latency(round_trip, LATENCY_ROUNDS)


def bandwidth(step: Callable[[], object]) -> float:
    """MB/s of one ARRAY_MB transfer: median of BIG_ROUNDS after one warm-up."""
    step()
    times = [timed(step)[0] for _ in range(BIG_ROUNDS)]
    return ARRAY_MB / statistics.median(times)


def raw_pair_bandwidth(array: np.ndarray) -> float:
    """The target's floor: send copy=False on a PAIR, receive on its peer, same process."""
    context = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    a.linger = b.linger = 0
    a.connect(f"tcp://127.0.0.1:{b.bind_to_random_port('tcp://127.0.0.1')}")

    def transfer() -> np.ndarray:
        a.send(memoryview(array), copy=False)
        return np.frombuffer(b.recv(copy=False).buffer, dtype=array.dtype)

    check(np.array_equal(transfer(), array), "raw PAIR transfer")
    result = bandwidth(transfer)
    a.close()
    b.close()
    context.term()
    return result


def raw_tcp_bandwidth(array: np.ndarray) -> float:
    """Below zmq: a plain TCP loopback socket, ``sendall`` in a thread, ``recv_into`` a
    preallocated buffer here. What the kernel can move; no framework reaches past it."""
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    listener.close()
    received = bytearray(array.nbytes)

    def transfer() -> bytearray:
        thread = threading.Thread(target=sender.sendall, args=(memoryview(array).cast("B"),))
        thread.start()
        view, got = memoryview(received), 0
        while got < len(received):
            got += receiver.recv_into(view[got:])
        thread.join()
        return received

    check(np.array_equal(np.frombuffer(transfer(), dtype=array.dtype), array), "raw TCP")
    result = bandwidth(transfer)
    sender.close()
    receiver.close()
    return result


def raw_proxy_bandwidth(array: np.ndarray) -> dict[str, float]:
    """Push (100 MB out, "ok" back) and pull ("pull" out, 100 MB back) through a C proxy
    process to another process: corral's client -> MUX queue -> engine topology."""
    with raw_peer(via_proxy=True) as req:

        def push() -> object:
            req.send(memoryview(array), copy=False)
            return req.recv()

        def pull() -> np.ndarray:
            req.send(b"pull")
            return np.frombuffer(req.recv(copy=False).buffer, dtype=array.dtype)

        push()
        check(np.array_equal(pull(), array), "raw proxy pull")
        return {"push_MBps": bandwidth(push), "pull_MBps": bandwidth(pull)}


# ---------------------------------------------------------------- the three frameworks


def measure(name: str, running: Running, array: np.ndarray) -> dict[str, Any]:
    """Latency, direct throughput and push/pull on a running cluster. Blocking calls are
    ``apply_async(...).get(timeout)`` (what ``apply_sync`` does, with a deadline) so that a
    lost message fails the run instead of hanging it."""
    client = running.client
    if running.name == "dask":
        workers = dask_workers(client)

        def noop_on_first() -> object:
            return client.submit(one, pure=False, workers=[workers[0]]).result(TIMEOUT)

        def throughput() -> int:
            futures = [
                client.submit(one, pure=False, workers=[workers[i % len(workers)]])
                for i in range(THROUGHPUT_TASKS)
            ]
            return sum(collect(futures, lambda future, left: future.result(left), TIMEOUT))

        held: list[Any] = []

        def push() -> object:
            held[:] = [client.scatter(array, workers=[workers[0]], hash=False, direct=True)]
            return held[0]

        def pull() -> np.ndarray:
            return client.gather(held[0], direct=True)
    else:
        view = client[client.ids[0]]
        views = [client[engine_id] for engine_id in client.ids]

        def noop_on_first() -> object:
            return view.apply_async(one).get(TIMEOUT)

        def throughput() -> int:
            results = [views[i % len(views)].apply_async(one) for i in range(THROUGHPUT_TASKS)]
            return sum(collect(results, lambda result, left: result.get(left), TIMEOUT))

        def push() -> object:
            return view.push({"a": array}, block=False).get(TIMEOUT)

        def pull() -> np.ndarray:
            return view.pull("a", block=False).get(TIMEOUT)

    check(noop_on_first() == 1, f"{name} no-op")
    result: dict[str, Any] = {"latency": latency(noop_on_first, LATENCY_ROUNDS)}
    try:
        throughput()  # warm-up (first-time function caching, connections)
        seconds, total = timed(throughput)
    except LostResults as lost:
        print(f"{name}: direct throughput FAILED: {lost}", file=sys.stderr)
        result["throughput_error"] = str(lost)
        result["throughput_tasks_per_s"] = None
    else:
        check(total == THROUGHPUT_TASKS, f"{name} throughput sum {total} != {THROUGHPUT_TASKS}")
        result["throughput_tasks_per_s"] = THROUGHPUT_TASKS / seconds
    push()
    pulled = pull()
    check(
        isinstance(pulled, np.ndarray) and np.array_equal(pulled, array),
        f"{name} pulled array differs",
    )
    del pulled
    result["push_MBps"] = bandwidth(push)
    result["pull_MBps"] = bandwidth(pull)
    return result


def startup(name: str, factory: ClusterFactory) -> dict[str, Any]:
    """Median seconds from nothing to a client seeing ENGINES engines, and to stop."""
    starts, stops = [], []
    for _ in range(STARTUP_REPEATS):
        with ExitStack() as stack:
            seconds, running = timed(lambda: stack.enter_context(factory(ENGINES)))
            seen = dask_workers(running.client) if running.name == "dask" else running.client.ids
            check(len(seen) == ENGINES, f"{name}: {len(seen)} engines at start")
        starts.append(seconds)
        stops.append(running.stop_seconds)
        check(not running.leftovers, f"{name} left processes behind: {running.leftovers}")
    return {
        "start_s": statistics.median(starts),
        "stop_s": statistics.median(stops),
        "start_all_s": starts,
    }


def main() -> None:
    diagnose_hangs()
    array = make_array()
    load_before = machine_load("before", wait=QUIET_WAIT)
    results: dict[str, Any] = {
        "engines": ENGINES,
        "array_MB": ARRAY_MB,
        "load_before": load_before,
        "raw_pyzmq": {},
    }
    raw = results["raw_pyzmq"]
    raw["latency_direct"] = raw_latency(via_proxy=False)
    raw["latency_via_proxy"] = raw_latency(via_proxy=True)
    raw["pair_MBps"] = raw_pair_bandwidth(array)
    raw["via_proxy"] = raw_proxy_bandwidth(array)
    raw["tcp_MBps"] = raw_tcp_bandwidth(array)
    leftovers: dict[str, list[str]] = {}
    for name, factory in FRAMEWORKS.items():
        print(f"measuring {name} ...", file=sys.stderr)
        with factory(ENGINES) as running:
            results[name] = measure(name, running, array)
        leftovers[name] = running.leftovers
    startups: dict[str, Any] = {}
    for name, factory in {**STARTUP, **STARTUP_VARIANTS}.items():
        print(f"timing start-up of {name} ...", file=sys.stderr)
        startups[name] = startup(name, factory)
    results["startup"] = startups
    results["load_after"] = machine_load("after")

    rows = []
    for name in FRAMEWORKS:
        r = results[name]
        rows.append(
            [
                name,
                r["latency"]["median_us"],
                r["latency"]["p90_us"],
                r["throughput_tasks_per_s"] or "LOST",
                r["push_MBps"],
                r["pull_MBps"],
            ]
        )
    rows.append(
        [
            "raw pyzmq, echo process",
            raw["latency_direct"]["median_us"],
            raw["latency_direct"]["p90_us"],
            None,
            raw["pair_MBps"],
            raw["pair_MBps"],
        ]
    )
    rows.append(
        [
            "raw pyzmq, via C proxy",
            raw["latency_via_proxy"]["median_us"],
            raw["latency_via_proxy"]["p90_us"],
            None,
            raw["via_proxy"]["push_MBps"],
            raw["via_proxy"]["pull_MBps"],
        ]
    )
    rows.append(["raw TCP socket, no zmq", None, None, None, raw["tcp_MBps"], raw["tcp_MBps"]])
    print_table(
        f"{ENGINES} engines, {os.cpu_count()} cores: no-op round trip on one engine (median "
        f"of {LATENCY_ROUNDS}); {THROUGHPUT_TASKS} direct no-ops round-robin; {ARRAY_MB} MB "
        "push/pull",
        ["", "latency us", "p90 us", "tasks/s", "push MB/s", "pull MB/s"],
        rows,
    )
    print(
        "raw bandwidth: 'echo process' row = one pyzmq PAIR send+recv in one process (the "
        "target's floor); 'via C proxy' = REQ -> C proxy process -> REP process; 'raw TCP' = "
        "sendall/recv_into on a loopback socket in one process"
    )
    print_table(
        f"start-up: nothing -> a client that sees {ENGINES} engines (median of "
        f"{STARTUP_REPEATS}), and stop",
        ["", "start s", "stop s"],
        [[name, r["start_s"], r["stop_s"]] for name, r in startups.items()],
    )

    ours, ipp = results["corral"], results["ipyparallel"]
    floor = raw["pair_MBps"]
    summary: dict[str, Any] = {
        "latency_vs_ipyparallel": ours["latency"]["median_us"] / ipp["latency"]["median_us"],
        "throughput_vs_ipyparallel": (ours["throughput_tasks_per_s"] or 0)
        / (ipp["throughput_tasks_per_s"] or float("inf")),
        "push_fraction_of_raw_pair": ours["push_MBps"] / floor,
        "pull_fraction_of_raw_pair": ours["pull_MBps"] / floor,
        "push_fraction_of_raw_proxy": ours["push_MBps"] / raw["via_proxy"]["push_MBps"],
        "pull_fraction_of_raw_proxy": ours["pull_MBps"] / raw["via_proxy"]["pull_MBps"],
    }
    targets = {
        "latency <= 0.5x ipyparallel": summary["latency_vs_ipyparallel"] <= 0.5,
        "throughput >= 3x ipyparallel": summary["throughput_vs_ipyparallel"] >= 3,
        "push and pull >= 80% of raw pyzmq": min(
            summary["push_fraction_of_raw_pair"], summary["pull_fraction_of_raw_pair"]
        )
        >= 0.8,
    }
    summary["targets"] = targets
    print(
        f"\ntargets: latency {summary['latency_vs_ipyparallel']:.2f}x ipyparallel's "
        f"(<= 0.5x: {verdict(targets['latency <= 0.5x ipyparallel'])}); "
        f"throughput {summary['throughput_vs_ipyparallel']:.2f}x ipyparallel's "
        f"(>= 3x: {verdict(targets['throughput >= 3x ipyparallel'])}); "
        f"push {summary['push_fraction_of_raw_pair']:.0%} / pull "
        f"{summary['pull_fraction_of_raw_pair']:.0%} of raw PAIR (>= 80%: "
        f"{verdict(targets['push and pull >= 80% of raw pyzmq'])}); "
        f"of raw via C proxy: push {summary['push_fraction_of_raw_proxy']:.0%}, pull "
        f"{summary['pull_fraction_of_raw_proxy']:.0%}"
    )
    print(f"machine: load {results['load_before']} before, {results['load_after']} after")
    results["summary"] = summary
    results["leftovers"] = leftovers
    results["left_behind_at_end"] = final_process_check()
    write_results("cluster", results)


if __name__ == "__main__":
    main()
