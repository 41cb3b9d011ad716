"""The engine's main thread per task, without a controller (issue 13, round seven).

An engine's :class:`~corral.engine.task_shell.TaskShell` and :class:`TaskRunner`, built as
``corral engine`` builds them (the same-host fast path configured as a registration turns it
on), serve their task socket, a DEALER connected over ``inproc://`` to a ROUTER that plays the
scheduler: it sends load-balanced no-op ``apply_request`` messages signed as a client signs
them, in bundles of ``--bundle`` as the scheduler sends them, and reads the replies. The
engine's loop runs on this process's main thread; the figure is that thread's CPU time per
task (``time.thread_time``), everything the engine's main thread does for a task: receive,
unbundle, verify, decode, unpack, run, pack the result, build, sign and bundle the reply, send.
A feeder thread keeps about ``--ahead`` tasks in flight, as the scheduler does with its
engines' queues; its CPU is not counted.

Median of ``--rounds`` rounds of ``--tasks`` tasks. ``--parts`` times the steps of a task
apart instead, in a hot loop without sockets (thread CPU per call, best of 5): verifying and
decoding a request (``Session.feed``, and the engine's inline ``read_request``), unpacking
the call, the output capture, serializing the result, making the reply, and
``TaskRunner.run`` whole (reply frames dropped). Another corral
tree (a baseline from ``git archive``) is measured with ``CORRAL_BENCH_SOURCE=DIR
PYTHONPATH=DIR``::

    PYTHONPATH=. .bench-venv/bin/python bench/bench_engine_path.py
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import threading
import time
from typing import Any

import zmq
from common import check, use_source, write_results

ROUNDS = 7
TASKS = 5000


def one() -> int:
    return 1


class Scheduler:
    """The ROUTER side: bundles of signed requests out, replies counted back."""

    def __init__(self, ctx: zmq.Context[Any], address: str, bundle: int, ahead: int) -> None:
        from corral.bundles import Outbox
        from corral.protocol.serialize import pack_apply_message
        from corral.protocol.session import Session

        self.router = ctx.socket(zmq.ROUTER)
        self.router.sndhwm = self.router.rcvhwm = 0
        self.router.bind(address)
        self.outbox = Outbox(self.router, 1)
        self.key = os.urandom(32).hex().encode()
        self.client = Session(self.key)
        for _ in range(3):  # from the third call on a client sends the kept pickle
            self.buffers = pack_apply_message(one, (), {})
        self.metadata = {"shm_reader": {"host": "bench", "pid": os.getpid()}}
        self.bundle = bundle
        self.ahead = ahead
        self.engine_identity = b""

    def requests(self, count: int) -> list[list[Any]]:
        """Signed request frames, routed to the engine as the scheduler routes them."""
        made = []
        for _ in range(count):
            msg = self.client.msg("apply_request", {}, metadata=self.metadata, buffers=self.buffers)
            made.append([self.engine_identity, *self.client.serialize(msg, [b"client-1"])])
        return made

    def feed(self, requests: list[list[Any]], done: threading.Event) -> None:
        """Send the requests ``bundle`` at a time, keeping at most ``ahead`` unanswered."""
        from corral.bundles import split_bundle

        router, sent, answered = self.router, 0, 0
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        while answered < len(requests):
            while sent < len(requests) and sent - answered < self.ahead:
                for frames in requests[sent : sent + self.bundle]:
                    self.outbox.put(frames)
                sent = min(sent + self.bundle, len(requests))
                for error, _ in self.outbox.flush():
                    raise RuntimeError(f"requests not sent: {error}")
            if not poller.poll(10_000):
                raise RuntimeError(f"no reply for 10 s ({answered} of {len(requests)})")
            while True:
                try:
                    frames = router.recv_multipart(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    break
                parts = split_bundle(frames[1:])
                answered += 1 if parts is None else len(parts)
        done.set()


def output_capture_class() -> Any:
    """The engine's OutputCapture class, from the tree measured (it moved out of
    ``corral.engine.namespace`` in issue 13's round sixteen)."""
    try:
        from corral.engine.capture import OutputCapture
    except ImportError:
        from corral.engine.namespace import OutputCapture  # type: ignore[attr-defined,no-redef]
    return OutputCapture


def build_engine(ctx: zmq.Context[Any], address: str, key: bytes) -> tuple[Any, Any, Any]:
    """A TaskShell and TaskRunner as ``corral engine`` makes them, the task DEALER connected."""
    from corral.engine.alarm import open_alarm
    from corral.engine.interrupts import InterruptGate
    from corral.engine.namespace import Namespace
    from corral.engine.runner import AbortList, EngineIdentity, TaskRunner
    from corral.engine.task_shell import TaskShell
    from corral.protocol.session import Session
    from corral.protocol.shm import Settings
    from corral.sharedmem import SharedMemory

    OutputCapture = output_capture_class()
    log = logging.getLogger("bench.engine")
    identity = EngineIdentity("bench-engine", 0)
    session = Session(key, session_id=identity.uuid, check_msg_type=False)
    shm = SharedMemory()
    if shm.host is not None:
        shm.configure(Settings(prefix="corral-" + os.urandom(8).hex(), host=shm.host))
    capture = OutputCapture(log=log)
    gate = InterruptGate()
    shell = TaskShell(
        session,
        identity,
        shm,
        log,
        watch_time_limit=lambda request: None,
        on_failure=lambda why: print(f"task loop failed: {why}", file=sys.stderr),
        alarm=open_alarm(),
    )

    def post(channel: bytes, frames: Any) -> None:  # as Engine._post does
        with gate.shielded():
            shell.reply(channel, frames)

    def post_reply(channel: bytes, frames: Any, answers: str) -> None:  # Engine._post_reply
        with gate.shielded():
            shell.reply(channel, frames, answers)

    runner = TaskRunner(
        session,
        identity,
        post,
        namespace=Namespace(),
        capture=capture,
        aborts=AbortList(),
        gate=gate,
        log=log,
        shm=shm,
        reply=post_reply,
    )
    task = ctx.socket(zmq.DEALER)
    task.identity = b"bench-engine"
    task.sndhwm = task.rcvhwm = 0
    task.connect(address)
    mux = ctx.socket(zmq.DEALER)  # unused: the shell serves both
    mux.connect("inproc://bench-mux")
    shell.attach(mux, task)
    return shell, runner, capture


def measure(tasks: int, rounds: int, bundle: int, ahead: int) -> list[float]:
    ctx: zmq.Context[Any] = zmq.Context()
    mux_router = ctx.socket(zmq.ROUTER)
    mux_router.bind("inproc://bench-mux")
    scheduler = Scheduler(ctx, "inproc://bench-task", bundle, ahead)
    shell, runner, capture = build_engine(ctx, "inproc://bench-task", scheduler.key)
    scheduler.engine_identity = b"bench-engine"
    figures: list[float] = []
    turn: dict[str, Any] = {}

    def serve() -> None:
        """One round on the main thread: the shell's loop until the feeder saw every reply."""
        requests = turn["requests"]
        done = threading.Event()
        feeder = threading.Thread(target=scheduler.feed, args=(requests, done), daemon=True)
        done_watch = threading.Thread(
            target=lambda: (done.wait(120), shell.loop.call_soon_threadsafe(shell.loop.stop)),
            daemon=True,
        )
        start = time.thread_time()
        feeder.start()
        done_watch.start()
        shell.run(runner)
        turn["cpu"] = time.thread_time() - start
        feeder.join(10)
        check(done.is_set(), "every reply came back")

    try:
        for index in range(rounds + 1):  # the first warms up
            turn["requests"] = scheduler.requests(tasks)
            serve()
            if index:
                figures.append(turn["cpu"] / tasks * 1e6)
            shell.loop = type(shell.loop)("engine-tasks")  # run() adds the sockets again
    finally:
        capture.close(timeout=1.0)
        runner.shm.close()
        ctx.destroy(linger=0)
    return figures


def parts(calls: int) -> dict[str, float]:
    """Thread CPU microseconds per call of each step of a no-op task (see the module doc)."""
    import timeit

    from corral.engine.interrupts import InterruptGate
    from corral.engine.namespace import Namespace
    from corral.engine.runner import AbortList, EngineIdentity, Request, TaskRunner
    from corral.protocol.serialize import (
        pack_apply_message,
        serialize_object,
        unpack_apply_message,
    )
    from corral.protocol.session import Session

    OutputCapture = output_capture_class()
    key = os.urandom(32).hex().encode()
    client = Session(key)
    for _ in range(3):  # from the third call on a client sends the kept pickle
        buffers = pack_apply_message(one, (), {})
    metadata = {"shm_reader": {"host": "bench", "pid": os.getpid()}}

    def requests(count: int) -> list[list[bytes]]:
        made = []
        for _ in range(count):
            msg = client.msg("apply_request", {}, metadata=metadata, buffers=buffers)
            made.append([bytes(memoryview(f)) for f in client.serialize(msg, [b"client-1"])])
        return made

    def best(step: Any, number: int = calls) -> float:
        runs = timeit.repeat(step, number=number, repeat=5, timer=time.thread_time)
        return min(runs) / number * 1e6

    figures: dict[str, float] = {}
    engine = Session(key, check_msg_type=False)
    fresh = iter(requests(6 * calls))
    figures["Session.feed (split, verify, parse)"] = best(lambda: engine.feed(next(fresh)))
    try:  # the engine's own reading of a request (trees before it have none)
        from corral.engine.envelope import read_request
    except ImportError:
        pass
    else:
        inline = Session(key, check_msg_type=False)
        fresh = iter(requests(6 * calls))
        figures["read_request (the engine's read)"] = best(
            lambda: read_request(inline, next(fresh))
        )
    request = engine.feed(requests(1)[0])
    figures["unpack_apply_message"] = best(lambda: unpack_apply_message(request.buffers))
    capture = OutputCapture()

    def captured() -> None:
        with capture.capture(None):
            pass

    figures["output capture, enter and exit"] = best(captured)
    figures["serialize_object(1)"] = best(lambda: serialize_object(1))
    reply_metadata = {"engine_uuid": "u" * 36, "engine_id": 0, "status": "ok"}
    result = serialize_object(1)
    figures["Session.msg of the reply"] = best(
        lambda: engine.msg(
            "apply_reply", {"status": "ok"}, parent=request, metadata=reply_metadata, buffers=result
        )
    )
    identity = EngineIdentity("u" * 36, 0)
    runner = TaskRunner(
        Session(key, check_msg_type=False),
        identity,
        lambda channel, frames: None,
        namespace=Namespace(),
        capture=capture,
        aborts=AbortList(),
        gate=InterruptGate(),
        log=logging.getLogger("bench.engine"),
    )
    reader = Session(key, check_msg_type=False)
    queued = iter([Request(b"task", reader.feed(frames)) for frames in requests(6 * calls)])
    figures["TaskRunner.run, whole"] = best(lambda: runner.run(next(queued)))
    capture.close(timeout=1.0)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=TASKS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--bundle", type=int, default=4, help="requests per zmq message")
    parser.add_argument("--ahead", type=int, default=16, help="tasks in flight at most")
    parser.add_argument("--parts", action="store_true", help="time the steps apart (hot loop)")
    args = parser.parse_args()
    use_source()
    if args.parts:
        steps = parts(5000)
        for name, value in steps.items():
            print(f"{name:40s} {value:7.2f} us")
        write_results("bench_engine_path_parts", {"us_per_call": steps})
        return
    figures = measure(args.tasks, args.rounds, args.bundle, args.ahead)
    median = statistics.median(figures)
    print(
        f"engine main thread, CPU us per no-op task (bundles of {args.bundle}, {args.ahead} "
        f"ahead): median {median:.1f} of {', '.join(f'{f:.1f}' for f in figures)}"
    )
    write_results(
        "bench_engine_path",
        {"us_per_task": median, "rounds": figures, "bundle": args.bundle, "ahead": args.ahead},
    )


if __name__ == "__main__":
    main()
