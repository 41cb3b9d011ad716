"""The task scheduler's shell alone: its thread CPU per load-balanced no-op, without a cluster.

A real :class:`~corral.controller.scheduler_shell.SchedulerShell` (its sockets bound and
connected on loopback: two engine DEALERs, a client DEALER, the Hub's monitor SUB on a Unix
socket, trusted as the controller's is) is fed what its loop would hand it, in its thread:
the client's requests in turns of ``--turn`` (each as a message from a bundle: the route a
``zmq.Frame``, its own frames ``bytes``), then the engines' replies in turns of 8, each turn
ended by the shell's flush (the sends of dispatches, copies and replies). With 2 engines of
16 slots nearly every task waits, as in ``bench_cpu_roles.py``. What is timed is the shell's
and the core's work (parsing, decisions, copies, bundling, sends); the loop's receive and
unbundling, and building the messages, are not. With ``--client-bundles`` each turn's
requests come as the client sends them, one bundle, handed to the shell as its loop hands
what the clients' socket received (the unbundling timed too: the scheduler may pass a
client's bundle on to the Hub as its copies). Prints the thread CPU us per task:

    PYTHONPATH=. .venv/bin/python bench/bench_scheduler_shell.py --tasks 20000 --repeats 3

Another tree is measured with ``CORRAL_BENCH_SOURCE=DIR PYTHONPATH=DIR``, as the other scripts.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import tempfile
import time
from typing import Any

import zmq
from common import use_source, write_results

TASKS = 20000
REPEATS = 3
TURN = 64  # requests read per loop turn
REPLY_TURN = 8  # replies read per loop turn
KEY = b"bench-scheduler-shell-key"
CONNECT_WAIT = 10.0  # seconds at most for the engines' connections to be up


def run_once(tasks: int, turn: int, client_bundles: bool = False) -> tuple[float, float]:
    """(requests, replies) phase: thread CPU us per task."""
    from corral.bundles import bundle
    from corral.controller.scheduler_shell import SchedulerShell
    from corral.protocol.session import Session

    context: zmq.Context[Any] = zmq.Context()
    folder = tempfile.mkdtemp(prefix="bench-scheduler-")
    sockets: list[zmq.Socket[Any]] = []

    def socket(kind: int) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = context.socket(kind)
        sock.linger = 0
        sockets.append(sock)
        return sock

    notifications = socket(zmq.PUB)
    notification_port = notifications.bind_to_random_port("tcp://127.0.0.1")
    monitor = socket(zmq.SUB)
    monitor.subscribe(b"")
    monitor.bind(f"ipc://{folder}/monitor")
    settings = {
        "key": KEY.decode(),
        "signature_scheme": "hmac-sha256",
        "url": "tcp://127.0.0.1",
        "notification": f"tcp://127.0.0.1:{notification_port}",
        "monitor": f"ipc://{folder}/monitor",
        "trusted_copies": True,
    }
    shell = SchedulerShell(settings, context)
    try:
        deadline = time.monotonic() + CONNECT_WAIT
        for index in range(2):
            uuid = f"00000000-0000-0000-0000-00000000000{index}"
            engine = socket(zmq.DEALER)
            engine.identity = uuid.encode()
            engine.connect(f"tcp://127.0.0.1:{shell.engine_port}")
            while True:  # the ROUTER refuses (mandatory routing) until the engine is connected
                try:
                    shell.engines.send_multipart([uuid.encode(), b"probe"])
                    break
                except zmq.ZMQError as err:
                    if err.errno != zmq.EHOSTUNREACH or time.monotonic() > deadline:
                        raise
                    engine.poll(10)
            if not engine.poll(int(CONNECT_WAIT * 1000)):
                raise SystemExit("the engine's probe did not arrive")
            engine.recv_multipart()
            shell._perform(shell.core.add_engine(uuid))
        client_socket = socket(zmq.DEALER)
        client_socket.identity = b"client-1"
        client_socket.connect(f"tcp://127.0.0.1:{shell.client_port}")
        client, engines = Session(KEY, username="user"), Session(KEY, username="corral")
        requests = {}
        received: list[list[Any]] = []
        buffers = [b"f" * 60, b"a" * 20, b"k" * 20]  # about a no-op's packed apply
        for _ in range(tasks):
            msg = client.msg("apply_request", {}, metadata={}, buffers=buffers)
            requests[msg.msg_id] = msg
            received.append([zmq.Frame(b"client-1"), *client.serialize(msg)])
        reply_metadata = {
            "engine_id": 0,
            "status": "ok",
            "started": "2026-11-30T23:00:00.000000+00:00",
            "completed": "2026-11-30T23:00:00.000100+00:00",
            "stdout": "",
            "stderr": "",
        }

        def reply(msg_id: str, uuid: str) -> list[Any]:
            msg = engines.msg(
                "apply_reply",
                {"status": "ok"},
                requests[msg_id],
                dict(reply_metadata, engine_uuid=uuid),
                [b"r" * 40],
            )
            return [zmq.Frame(uuid.encode()), b"client-1", *engines.serialize(msg)]

        def drain() -> None:  # what the shell sent, read and dropped (not timed)
            for sock in sockets:
                while sock.poll(0):
                    sock.recv_multipart(copy=False)

        # a client's bundle of a turn's requests, as the clients' socket receives it
        bundles = [
            [zmq.Frame(b"client-1")]
            + [zmq.Frame(frame) for frame in bundle([], [m[1:] for m in received[at : at + turn]])]
            for at in range(0, tasks, turn)
        ]
        # what the shell's loop calls for what the clients' socket received (older trees:
        # the loop unbundled, the shell read each request)
        on_received = getattr(shell, "_on_requests", None) or (
            lambda frames: shell.loop.deliver(shell._on_request, frames)
        )
        gc.collect()
        gc.freeze()
        submitting = 0.0
        for start in range(0, tasks, turn):
            began = time.thread_time()
            if client_bundles:
                on_received(bundles[start // turn])
            else:
                for frames in received[start : start + turn]:
                    shell._on_request(frames)
            shell._flush()
            submitting += time.thread_time() - began
            drain()
        replying = 0.0
        while shell.pending:
            running: list[list[Any]] = []
            for msg_id in shell.pending:
                running_on = shell.core._running_on(msg_id)
                if running_on is not None:
                    running.append(reply(msg_id, running_on))
                    if len(running) == REPLY_TURN:
                        break
            if not running:  # a dispatch the shell could not send: nothing would end it here
                raise SystemExit(f"{len(shell.pending)} tasks held and none running")
            began = time.thread_time()
            for replied in running:
                shell._on_engine_reply(replied)
            shell._flush()
            replying += time.thread_time() - began
            drain()
        gc.unfreeze()
        if shell.counts["completed"] != tasks:
            raise SystemExit(f"{shell.counts['completed']} of {tasks} tasks completed")
        return submitting / tasks * 1e6, replying / tasks * 1e6
    finally:
        for sock in sockets:
            sock.close(0)
        shell.close()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=TASKS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--turn", type=int, default=TURN, help="requests per loop turn")
    parser.add_argument(
        "--client-bundles",
        action="store_true",
        help="each turn's requests as one client bundle, unbundled by the shell (timed)",
    )
    args = parser.parse_args()
    origin = use_source()
    totals: list[float] = []
    runs = []
    for _ in range(args.repeats):
        requests, replies = run_once(args.tasks, args.turn, args.client_bundles)
        totals.append(requests + replies)
        runs.append({"requests_us": requests, "replies_us": replies})
        print(
            f"  requests {requests:5.1f} us/task, replies {replies:5.1f}, "
            f"total {requests + replies:5.1f}"
        )
    print(
        f"{args.tasks} tasks x {args.repeats}, median scheduler shell CPU us per task: "
        f"{statistics.median(totals):.1f}"
    )
    write_results(
        "scheduler_shell",
        {
            "settings": vars(args) | {"corral": str(origin)},
            "runs": runs,
            "median_us": statistics.median(totals),
        },
    )


if __name__ == "__main__":
    main()
