"""The client's hand-off alone: user threads -> ClientIO's I/O thread -> a socket.

No controller: ROUTER and PUB sockets bound here stand in for it, and a ROUTER on the task
address counts what arrives. Each round hands 50000 signed apply_requests (built once, before
the clock starts) to ``ClientIO.send`` from 1 and from 8 threads, and ends when the sink has
received them all (the I/O thread sends what queued in a turn as one bundle: the sink
counts its messages). Reported: wall time and process CPU per message (best of 3 rounds; the CPU
includes the sink's receiving, the same for every version), and the open file descriptors
after 500 short-lived threads have each sent one message.

Run: `.venv/bin/python bench/bench_client_handoff.py` (or `make bench`).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import zmq
from common import print_table, write_results

from corral.bundles import split_bundle
from corral.client.io_shell import ClientIO
from corral.protocol.session import Message, Session

MESSAGES = 50_000
ROUNDS = 3
SHORT_LIVED = 500


class Ignore:
    """A Handler that drops everything: nothing is sent back in this benchmark."""

    def on_reply(self, msg: Message) -> None: ...

    def on_reply_again(self, msg: Message) -> None: ...

    def on_notification(self, msg: Message) -> None: ...

    def on_iopub(self, msg: Message) -> None: ...

    def on_closed(self) -> None: ...

    def on_link(self, up: bool) -> None: ...


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def received(sink: zmq.Socket[Any], count: int) -> None:
    """Receive ``count`` messages, those of a bundle (corral.bundles) counted one by one."""
    while count > 0:
        if not sink.poll(30_000):
            raise AssertionError(f"the sink stopped receiving: {count} messages were lost")
        frames = sink.recv_multipart(copy=False)
        messages = split_bundle(frames[1:])  # after the sender's identity
        count -= 1 if messages is None else len(messages)


def handoff(
    io: ClientIO, sink: zmq.Socket[Any], frames: list[Any], threads: int
) -> tuple[float, float]:
    """Wall and CPU seconds per message for one round."""
    per_thread = MESSAGES // threads

    def produce() -> None:
        for _ in range(per_thread):
            io.send(b"task", frames)

    wall, cpu = time.perf_counter(), time.process_time()
    producers = [threading.Thread(target=produce) for _ in range(threads)]
    for producer in producers:
        producer.start()
    received(sink, per_thread * threads)
    for producer in producers:
        producer.join()
    count = per_thread * threads
    return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


def main() -> None:
    context: zmq.Context[Any] = zmq.Context()
    sockets: dict[str, zmq.Socket[Any]] = {}
    addresses: dict[str, str] = {}
    kinds = {"hub": zmq.ROUTER, "notification": zmq.PUB, "mux": zmq.ROUTER}
    kinds |= {"control": zmq.ROUTER, "task": zmq.ROUTER, "iopub": zmq.PUB}
    for name, kind in kinds.items():
        sock = context.socket(kind)
        sock.linger = 0
        sock.rcvhwm = 0
        addresses[name] = f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"
        sockets[name] = sock
    session = Session(b"benchmark-key")
    io = ClientIO(session, addresses, Ignore())
    io.start(10)
    try:
        msg = session.msg("apply_request", {}, buffers=[b"f" * 200, b"a" * 50])
        frames = list(session.serialize(msg))
        rows = []
        results: dict[str, Any] = {}
        for threads in (1, 8):
            best = min(handoff(io, sockets["task"], frames, threads) for _ in range(ROUNDS))
            rows.append((f"{threads} thread(s)", best[0] * 1e6, best[1] * 1e6))
            results[f"threads_{threads}"] = {"wall_us": best[0] * 1e6, "cpu_us": best[1] * 1e6}
        before = open_fds()
        for _ in range(SHORT_LIVED):
            thread = threading.Thread(target=io.send, args=(b"task", frames))
            thread.start()
            thread.join()
        received(sockets["task"], SHORT_LIVED)
        grown = open_fds() - before
        results["fds_after_short_lived_threads"] = grown
    finally:
        io.close()
        for sock in sockets.values():
            sock.close()
        context.term()
    print_table(
        f"client hand-off, {MESSAGES} messages, best of {ROUNDS}",
        ["senders", "wall us/msg", "cpu us/msg"],
        rows,
    )
    print(f"\nfile descriptors gained after {SHORT_LIVED} short-lived sending threads: {grown}")
    write_results("client_handoff", results)


if __name__ == "__main__":
    main()
