"""Where one hop through the MUX goes: raw pyzmq echoes through a monitored queue, case by case.

Three processes, as corral's direct path has them: a client DEALER (this process), a
``ThreadMonitoredQueue`` ROUTER/ROUTER in a second process (the controller's MUX device: it
swaps the two routing identities and publishes a copy of each message on a PUB), and an echoing
DEALER in a third (the engine). Each round trip sends one corral-sized request (eight frames,
about 700 bytes) and waits for its echo; no Python runs in the device process per message
unless a case adds a subscriber for the copies (the Hub).

What a case can change, one thing at a time against ``base`` (tcp, copies published but not
read, one zmq I/O thread, every side waiting in a ``zmq.Poller``):

- ``transport``: ``tcp://127.0.0.1`` or ``ipc://`` (Unix sockets in a private folder);
- ``monitor``: ``pub`` (copies published, no subscriber), ``sub`` (a thread of the device's
  process reads every copy, as the Hub does), ``sub`` with ``hub_work`` microseconds of CPU
  per copy at nice 10 (the Hub's priority, ``corral/priority.py``);
- ``io_threads``: the device process's zmq I/O threads;
- ``device_nice`` / ``device_cpu``: the device thread's nice value, and pinning it to a core;
- ``wait``: how both ends wait for a message: ``block`` (a blocking ``recv``), ``poller``
  (``zmq.Poller``, as ``corral.loop.Loop`` does), ``fd`` (``select.poll`` on ``ZMQ_FD``, then
  ``ZMQ_EVENTS``, as the client's I/O thread does), ``loop`` (a ``corral.loop.Loop`` on the
  echo's side, a poller on the client's), ``spin<N>`` (non-blocking receives for N
  microseconds, then a blocking one);
- ``immediate``: ``ZMQ_IMMEDIATE`` on the DEALERs.

``raw`` is the floor: DEALER to an echoing ROUTER, one hop, no device. Each case is run
``--repeats`` times, the cases interleaved, each time with fresh processes; the table gives the
round trip's median, p90 and p99 (us) and the CPU of all three processes per round trip (us).
Run it alone from an empty folder::

    PYTHONPATH=$PWD .venv/bin/python bench/bench_transport.py --rounds 5000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import zmq
from zmq import devices as zmq_devices

WARMUP = 500
REQUEST = [
    b"<IDS|MSG>",
    b"5" * 64,
    json.dumps(
        {
            "msg_id": "3f" * 16,
            "session": "a1" * 16,
            "username": "bench",
            "date": "2026-12-01T07:00:00.000000Z",
            "msg_type": "apply_request",
            "version": "5.3",
        }
    ).encode(),
    b"{}",
    b'{"shm_reader": {"host": "0123456789abcdef", "pid": 4242}}',
    b"{}",
    b"\x80\x05" + b"x" * 160,
]


@dataclass(frozen=True)
class Case:
    name: str
    transport: str = "tcp"
    monitor: str = "pub"  # none (raw one hop, no device), pub, sub
    hub_work: int = 0  # us of CPU per copy in the subscriber
    hub_nice: int = 0
    io_threads: int = 1
    device_nice: int = 0
    device_cpu: int = -1
    wait: str = "poller"
    immediate: bool = False


CASES = [
    Case("raw one hop (no device)", monitor="none"),
    Case("base: tcp, copies unread, poller"),
    Case("ipc", transport="ipc"),
    Case("copies read (sub)", monitor="sub"),
    Case("copies read, 20 us each, nice 10", monitor="sub", hub_work=20, hub_nice=10),
    Case("ipc, copies read, 20 us, nice 10", "ipc", "sub", hub_work=20, hub_nice=10),
    Case("io_threads 2", io_threads=2),
    Case("device nice -5", device_nice=-5),
    Case("device pinned to cpu 0", device_cpu=0),
    Case("wait: blocking recv", wait="block"),
    Case("wait: ZMQ_FD + select.poll", wait="fd"),
    Case("wait: corral Loop", wait="loop"),
    Case("wait: spin 20 us", wait="spin20"),
    Case("wait: spin 100 us", wait="spin100"),
    Case("ZMQ_IMMEDIATE", immediate=True),
]


# ---------------------------------------------------------------- waiting


def waiter(sock: zmq.Socket[Any], how: str) -> Callable[[], list[bytes]]:
    """A function that returns the next message of ``sock``, waiting as ``how`` says."""
    if how == "block":
        return lambda: sock.recv_multipart()
    if how == "poller":
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)

        def by_poller() -> list[bytes]:
            poller.poll()
            return sock.recv_multipart(zmq.NOBLOCK)

        return by_poller
    if how == "fd":
        descriptor = select.poll()
        descriptor.register(sock.getsockopt(zmq.FD), select.POLLIN)

        def by_descriptor() -> list[bytes]:
            while not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                descriptor.poll()
            return sock.recv_multipart(zmq.NOBLOCK)

        return by_descriptor
    if how.startswith("spin"):
        budget = int(how[4:]) * 1000

        def by_spinning() -> list[bytes]:
            until = time.perf_counter_ns() + budget
            while time.perf_counter_ns() < until:
                try:
                    return sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    pass
            return sock.recv_multipart()

        return by_spinning
    raise ValueError(f"unknown wait {how!r}")


def dealer(context: zmq.Context[Any], identity: bytes, case: Case) -> zmq.Socket[Any]:
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.identity = identity
    if case.immediate:
        sock.immediate = True
    return sock


# ---------------------------------------------------------------- the three roles


def serve_cpu_questions(done: threading.Event) -> None:
    """Answer each line on stdin with this process's CPU seconds (all threads); end on EOF."""

    def answer() -> None:
        for _ in sys.stdin:
            print(json.dumps({"cpu": time.process_time()}), flush=True)
        done.set()

    threading.Thread(target=answer, daemon=True).start()


def run_device(case: Case, folder: str) -> None:
    context = zmq.Context(io_threads=case.io_threads)
    if case.monitor == "none":  # the echo binds; nothing runs here
        done = threading.Event()
        print(json.dumps({}), flush=True)
        serve_cpu_questions(done)
        done.wait()
        return
    device = zmq_devices.ThreadMonitoredQueue(zmq.ROUTER, zmq.ROUTER, zmq.PUB, b"in", b"out")
    device.context_factory = lambda: context
    device.daemon = True
    addresses = {}
    for side in ("in", "out"):
        if case.transport == "ipc":
            address = f"ipc://{folder}/{side}"
            getattr(device, f"bind_{side}")(address)
        else:
            port = getattr(device, f"bind_{side}_to_random_port")("tcp://127.0.0.1")
            address = f"tcp://127.0.0.1:{port}"
        addresses[side] = address
        getattr(device, f"setsockopt_{side}")(zmq.LINGER, 0)
    device.setsockopt_mon(zmq.SNDHWM, 0)
    device.bind_mon("inproc://copies")
    device.start()
    deadline = time.monotonic() + 10
    while device.launcher.native_id is None and time.monotonic() < deadline:
        time.sleep(0.001)
    thread_id = device.launcher.native_id
    if case.device_nice:
        os.setpriority(os.PRIO_PROCESS, thread_id, case.device_nice)
    if case.device_cpu >= 0:
        os.sched_setaffinity(thread_id, {case.device_cpu})
    if case.monitor == "sub":
        threading.Thread(target=read_copies, args=(context, case), daemon=True).start()
    done = threading.Event()
    print(json.dumps(addresses), flush=True)
    serve_cpu_questions(done)
    done.wait()


def read_copies(context: zmq.Context[Any], case: Case) -> None:
    """The Hub's part: read every copy, spending ``hub_work`` us of CPU on each."""
    if case.hub_nice:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), case.hub_nice)
    sub = context.socket(zmq.SUB)
    sub.rcvhwm = 0
    sub.subscribe(b"")
    for _ in range(1000):
        try:
            sub.connect("inproc://copies")
            break
        except zmq.ZMQError:
            time.sleep(0.01)
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    work = case.hub_work * 1000
    while True:
        poller.poll()
        while sub.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            sub.recv_multipart()
            until = time.perf_counter_ns() + work
            while time.perf_counter_ns() < until:
                pass


def run_echo(case: Case, address: str) -> None:
    context = zmq.Context()
    done = threading.Event()
    if case.monitor == "none":
        sock = context.socket(zmq.ROUTER)
        sock.linger = 0
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        address = f"tcp://127.0.0.1:{port}"
    else:
        sock = dealer(context, b"engine", case)
        sock.connect(address)
    print(json.dumps({"address": address}), flush=True)
    serve_cpu_questions(done)
    if case.wait == "loop":
        from corral.loop import Loop

        loop = Loop("echo")
        loop.add_socket(sock, lambda frames: sock.send_multipart(frames), small_as_bytes=True)
        threading.Thread(target=lambda: (done.wait(), loop.stop()), daemon=True).start()
        loop.run()
        return
    receive = waiter(sock, case.wait)
    while True:
        sock.send_multipart(receive())


def ask_cpu(process: subprocess.Popen[str]) -> float:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("cpu\n")
    process.stdin.flush()
    return float(json.loads(process.stdout.readline())["cpu"])


def measure(case: Case, rounds: int) -> dict[str, float]:
    """One run of ``case`` with fresh processes: round trip figures and CPU, us."""
    folder = tempfile.mkdtemp(prefix="corral-transport-")
    os.chmod(folder, 0o700)
    spec = json.dumps(asdict(case))
    started: list[subprocess.Popen[str]] = []

    def start(role: str, *extra: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
        process = subprocess.Popen(
            [sys.executable, __file__, "--role", role, "--case", spec, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {role} process did not start")
        return process, json.loads(line)

    context = zmq.Context()
    try:
        device, addresses = start("device", "--folder", folder)
        echo, echoed = start("echo", "--address", addresses.get("out", ""))
        sock = dealer(context, b"client", case)
        sock.connect(addresses.get("in", echoed["address"]))
        request = [b"engine", *REQUEST]
        if case.monitor == "none":
            request = list(REQUEST)
        receive = waiter(sock, "poller" if case.wait == "loop" else case.wait)
        # a ROUTER drops what it cannot route yet: send until the echo's connection is up,
        # then drop the extra echoes
        deadline = time.monotonic() + 20
        while True:
            sock.send_multipart(request)
            if sock.poll(100):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{case.name}: no echo in 20 s")
        while sock.poll(200):
            sock.recv_multipart()
        for _ in range(WARMUP):
            sock.send_multipart(request)
            receive()
        clock = time.perf_counter_ns
        spans = []
        cpu_before = time.process_time() + ask_cpu(device) + ask_cpu(echo)
        for _ in range(rounds):
            began = clock()
            sock.send_multipart(request)
            receive()
            spans.append((clock() - began) / 1000)
        cpu = time.process_time() + ask_cpu(device) + ask_cpu(echo) - cpu_before
        sock.close()
    finally:
        context.term()
        for process in started:
            assert process.stdin is not None
            process.stdin.close()
            process.kill()
            process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    spans.sort()
    return {
        "median": statistics.median(spans),
        "p90": spans[int(len(spans) * 0.9)],
        "p99": spans[int(len(spans) * 0.99)],
        "cpu": cpu * 1e6 / rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated case numbers (0 = raw)")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "device":
        run_device(Case(**json.loads(args.case)), args.folder)
        return
    if args.role == "echo":
        run_echo(Case(**json.loads(args.case)), args.address)
        return
    cases = CASES
    if args.only:
        cases = [CASES[int(index)] for index in args.only.split(",")]
    results: dict[str, list[dict[str, float]]] = {case.name: [] for case in cases}
    for _ in range(args.repeats):
        for case in cases:
            results[case.name].append(measure(replace(case), args.rounds))
            print(case.name, results[case.name][-1], file=sys.stderr, flush=True)
    from common import write_results

    write_results("transport", {"rounds": args.rounds, "load": os.getloadavg()[0], **results})
    print(f"load {os.getloadavg()[0]:.1f}; {args.rounds} round trips per run, us")
    print(f"{'case':44} {'median':>16} {'p90':>16} {'p99':>16} {'cpu':>16}")
    for name, runs in results.items():
        cells = [
            ", ".join(f"{run[key]:.0f}" for run in runs) for key in ("median", "p90", "p99", "cpu")
        ]
        print(f"{name:44} " + " ".join(f"{cell:>16}" for cell in cells))


if __name__ == "__main__":
    main()
