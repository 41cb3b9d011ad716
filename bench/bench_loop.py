"""corral's event loop against asyncio (zmq.asyncio), on the same relay, in one run.

Issue 10 asks for one loop in every process, asyncio if it is as fast. Each corral process is a
relay between sockets around a small synchronous core, so this measures exactly that: a relay
process (ROUTER facing the client, DEALER facing a worker) written once on :class:`corral.loop.Loop`
and once on asyncio with a TaskGroup, and a raw-pyzmq echo worker behind it. The client, here,
measures

- round trip: one message at a time through client -> relay -> worker -> relay -> client
  (median and p99 over ROUNDS, microseconds);
- throughput: MESSAGES sent with at most WINDOW in flight, like a burst of load-balanced tasks
  (messages per second), and the relay's CPU per message.

Run: `.venv/bin/python bench/bench_loop.py` (or `make bench`). Results in bench/results/loop.json.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

import psutil
import zmq
from common import print_table, write_results

ROUNDS = 3000
MESSAGES = 50_000
WINDOW = 200
REPEATS = 3

RELAY_LOOP = """
import sys, zmq
from corral.loop import Loop
ctx = zmq.Context()
front = ctx.socket(zmq.ROUTER); front.linger = 0
back = ctx.socket(zmq.DEALER); back.linger = 0
port = front.bind_to_random_port("tcp://127.0.0.1")
back.connect(sys.argv[1])
loop = Loop("relay")
loop.add_socket(back, lambda frames: front.send_multipart(frames, copy=False))
loop.add_socket(front, lambda frames: back.send_multipart(frames, copy=False))
loop.add_reader(sys.stdin.fileno(), loop.stop)
print(port, flush=True)
loop.run()
"""

RELAY_ASYNCIO = """
import asyncio, sys, zmq, zmq.asyncio
async def main():
    ctx = zmq.asyncio.Context()
    front = ctx.socket(zmq.ROUTER); front.linger = 0
    back = ctx.socket(zmq.DEALER); back.linger = 0
    port = front.bind_to_random_port("tcp://127.0.0.1")
    back.connect(sys.argv[1])
    async def pump(src, dst):
        while True:
            await dst.send_multipart(await src.recv_multipart(copy=False), copy=False)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(sys.stdin.fileno(), stop.set)
    print(port, flush=True)
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(pump(front, back)), group.create_task(pump(back, front))]
        await stop.wait()
        for task in tasks:
            task.cancel()
asyncio.run(main())
"""

WORKER = """
import sys, zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER); sock.linger = 0
print(sock.bind_to_random_port("tcp://127.0.0.1"), flush=True)
while True:
    frames = sock.recv_multipart(copy=False)
    if frames[-1].bytes == b"stop":
        break
    sock.send_multipart(frames, copy=False)
"""


def start(code: str, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def measure(relay_code: str) -> dict[str, float]:
    worker, worker_port = start(WORKER)
    relay, relay_port = start(relay_code, f"tcp://127.0.0.1:{worker_port}")
    ctx: zmq.Context[Any] = zmq.Context()
    client = ctx.socket(zmq.DEALER)
    client.linger = 0
    client.connect(f"tcp://127.0.0.1:{relay_port}")
    payload = b"x" * 64
    try:
        for _ in range(200):  # warm up every connection
            client.send(payload)
            client.recv()
        samples = []
        for _ in range(ROUNDS):
            begin = time.perf_counter()
            client.send(payload)
            client.recv()
            samples.append((time.perf_counter() - begin) * 1e6)
        samples.sort()
        relay_cpu = psutil.Process(relay.pid)
        cpu_before = sum(relay_cpu.cpu_times()[:2])
        begin = time.perf_counter()
        sent = received = 0
        while received < MESSAGES:
            while sent < MESSAGES and sent - received < WINDOW:
                client.send(payload)
                sent += 1
            client.recv()
            received += 1
        elapsed = time.perf_counter() - begin
        cpu = sum(relay_cpu.cpu_times()[:2]) - cpu_before
        return {
            "median_us": statistics.median(samples),
            "p99_us": samples[int(len(samples) * 0.99)],
            "msgs_per_s": MESSAGES / elapsed,
            "relay_cpu_us_per_msg": cpu / MESSAGES * 1e6,
        }
    finally:
        client.send(b"stop")  # reaches the worker through the relay
        client.close()
        ctx.term()
        for proc in (relay, worker):
            assert proc.stdin is not None
            proc.stdin.close()  # the relay stops when its stdin closes
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    runs: dict[str, list[dict[str, float]]] = {"corral Loop": [], "asyncio TaskGroup": []}
    for _ in range(REPEATS):  # alternate, so a change in machine load hits both alike
        runs["corral Loop"].append(measure(RELAY_LOOP))
        runs["asyncio TaskGroup"].append(measure(RELAY_ASYNCIO))
    summary = {
        name: {key: statistics.median(run[key] for run in results) for key in results[0]}
        for name, results in runs.items()
    }
    rows = [
        [
            name,
            f"{s['median_us']:.0f}",
            f"{s['p99_us']:.0f}",
            f"{s['msgs_per_s']:,.0f}",
            f"{s['relay_cpu_us_per_msg']:.1f}",
        ]
        for name, s in summary.items()
    ]
    print_table(
        f"relay loop, median of {REPEATS} runs",
        ["loop", "round trip median µs", "p99 µs", "msgs/s (window 200)", "relay CPU µs/msg"],
        rows,
    )
    write_results("loop", {"summary": summary, "runs": runs})


if __name__ == "__main__":
    main()
