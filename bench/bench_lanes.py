"""One hop between two processes on this host: a zmq echo against a lane echo (issue 13).

Why lanes exist (``corral/lane.py``): a zmq message between two processes crosses the sender's
zmq I/O thread and the receiver's, each a thread wake-up, which on two busy cores waits for a
CPU. Here a process sends a corral-sized request (eight frames, about 900 bytes) and waits for
its echo from a second process, ``--rounds`` times, in three ways, interleaved ``--repeats``
times with fresh processes:

- ``zmq``: a DEALER to an echoing ROUTER over tcp on loopback (the direct ROUTER's path);
- ``lane``: :class:`corral.lane.Lane` both ends (the request and its echo as lane packets, as
  corral's client and engine send them), the echo side blocked in ``poll``;
- ``unix``: a bare seqpacket socket pair, one ``send`` and one ``recv`` each way (the floor).

It prints each case's median, p90 and p99 round trip and the CPU of both processes per round
trip. Run it alone, from an empty folder::

    PYTHONPATH=$PWD .venv/bin/python bench/bench_lanes.py --rounds 5000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import zmq
from common import print_table, use_source, write_results

WARMUP = 500
FRAMES = [
    b"<IDS|MSG>",
    b"5" * 64,
    b"{" + b"h" * 250 + b"}",
    b"{" + b"p" * 120 + b"}",
    b"{}",
    b"{}",
    b"f" * 300,
    b"a" * 50,
]


def cpu() -> float:
    """CPU seconds of this process and its waited-for children so far."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def timed(rounds: int, one: Callable[[], None]) -> tuple[list[float], float]:
    for _ in range(WARMUP):
        one()
    samples = []
    start = cpu()
    for _ in range(rounds):
        began = time.perf_counter()
        one()
        samples.append(time.perf_counter() - began)
    return samples, cpu() - start


def run_zmq(rounds: int) -> list[float]:
    ctx: zmq.Context[Any] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    pid = os.fork()
    if pid == 0:  # the echo
        try:
            echo: zmq.Context[Any] = zmq.Context()
            dealer = echo.socket(zmq.DEALER)
            dealer.connect(f"tcp://127.0.0.1:{port}")
            dealer.send(b"ready")
            while True:
                frames = dealer.recv_multipart(copy=False)
                if len(frames) == 1:
                    break
                dealer.send_multipart(frames, copy=False)
        finally:
            os._exit(0)
    peer, _ = router.recv_multipart()
    frames = [peer, *FRAMES]

    def one() -> None:
        router.send_multipart(frames)
        router.recv_multipart(copy=False)

    samples, _ = timed(rounds, one)
    router.send_multipart([peer, b"stop"])
    os.waitpid(pid, 0)
    router.close(linger=0)
    ctx.term()
    return samples


def run_lane(rounds: int) -> list[float]:
    from corral.lane import Lane

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            lane = Lane(theirs, b"client")
            poller = select.poll()
            poller.register(theirs.fileno(), select.POLLIN)
            while True:
                poller.poll()
                messages, still_open = lane.receive(64)
                for message in messages:
                    lane.send(message)
                if not still_open:
                    break
        finally:
            os._exit(0)
    theirs.close()
    lane = Lane(ours, b"engine")
    poller = select.poll()
    poller.register(ours.fileno(), select.POLLIN)

    def one() -> None:
        lane.send(FRAMES)
        while True:
            messages, _ = lane.receive(1)
            if messages:
                return
            poller.poll()

    samples, _ = timed(rounds, one)
    lane.close()
    os.waitpid(pid, 0)
    return samples


def run_unix(rounds: int) -> list[float]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    payload = b"".join(FRAMES)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            while True:
                data = theirs.recv(65536)
                if not data:
                    break
                theirs.send(data)
        finally:
            os._exit(0)
    theirs.close()

    def one() -> None:
        ours.send(payload)
        ours.recv(65536)

    samples, _ = timed(rounds, one)
    ours.close()
    os.waitpid(pid, 0)
    return samples


CASES: dict[str, Callable[[int], list[float]]] = {
    "zmq": run_zmq,
    "lane": run_lane,
    "unix": run_unix,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    use_source()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CASES}
    for _ in range(args.repeats):
        for name, case in CASES.items():
            before = cpu()
            samples = case(args.rounds)
            used = cpu() - before  # both processes: the echo is a waited-for child
            samples.sort()
            results[name].append(
                {
                    "median": statistics.median(samples) * 1e6,
                    "p90": samples[int(0.9 * len(samples))] * 1e6,
                    "p99": samples[int(0.99 * len(samples))] * 1e6,
                    "cpu": used / (args.rounds + WARMUP) * 1e6,
                }
            )
    rows = [
        [
            name,
            *(
                ", ".join(f"{run[key]:.0f}" for run in runs)
                for key in ("median", "p90", "p99", "cpu")
            ),
        ]
        for name, runs in results.items()
    ]
    print_table(
        f"one round trip between two processes, {args.rounds} per run, us (load "
        f"{os.getloadavg()[0]:.1f})",
        ["case", "median", "p90", "p99", "cpu"],
        rows,
    )
    write_results("lanes", {"rounds": args.rounds, **results})


if __name__ == "__main__":
    main()
