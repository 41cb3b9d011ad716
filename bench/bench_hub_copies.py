"""The Hub's CPU per load-balanced task, alone: the scheduler's copies fed to a real HubShell.

No cluster: a Hub with one registered engine, the default SQLite store in a temporary folder,
and a :class:`~corral.controller.hub_shell.HubShell` on real (unconnected) sockets. Each task is
what the scheduler sends the Hub for a no-op ``apply`` (``bench_cpu_roles.py``'s task), in
bundles of ``BLOCK`` tasks' copies as the scheduler sends them (read as the Hub's loop reads a
received bundle): a ``task_in`` copy (with the engine when it was dispatched at once, else
without: ``--waiting`` of them, whose engine a ``task_dest`` copy names later) and a
``task_out`` copy, the copies signed as a client and an engine sign them, and fed to the
shell's handler in the order a steady stream interleaves them (``--lag`` requests ahead of the
replies). A task that waited is dispatched, and named in its scheduler turn's ``task_dest``
copy (one per block; in a tree without such copies, one copy per dispatch), in the block of its
reply, before it: as when a backlog waits for engines, so that its engine and its result reach
the store together, as in a cluster (until round eight the copy came right after the request,
and the store merged the engine into the request instead). Prints CPU microseconds per task in
the Hub's thread and in the store's writer thread (the whole process minus the Hub's thread),
the writes' reads-see-writes checked at the end (every task found completed):

    PYTHONPATH=. .venv/bin/python bench/bench_hub_copies.py --tasks 20000 --repeats 5

``--direct`` feeds the MUX device's copies instead (bundled, as when clients and engines
bundle), and ``--direct --alone`` publishes them one message each (as the MUX publishes a
round trip's) on an inproc PUB to the shell's device monitor, read by the shell's own loop:
the Hub's thread CPU then includes the loop's turns and its receive of every frame.

Another tree is measured with ``CORRAL_BENCH_SOURCE=DIR PYTHONPATH=DIR``, as the other scripts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from inspect import signature
from pathlib import Path
from typing import Any

import zmq
from common import use_source, write_results

TASKS = 20000
REPEATS = 5
LAG = 8  # requests seen before the first reply: a few tasks in flight, as with two engines
WAITING = 0.2  # share of tasks that wait in the scheduler (task_in without engine, task_dest)
BLOCK = 20  # tasks built, then fed
RATE = 2000.0  # tasks per second fed (about bench_cpu_roles.py's pace): batches as there
FED: list[bytes] = []  # in place of a reply fed (one shared object, not one per task)


def one() -> int:
    return 1


def run_once(
    tasks: int,
    lag: int,
    waiting: float,
    folder: Path,
    kind: str,
    rate: float,
    given: Any = None,
    direct: bool = False,
    alone: bool = False,
    inspect: Callable[[Any, Any], None] | None = None,
) -> tuple[float, float]:
    """(Hub thread, writer) CPU us per task for one stream of ``tasks`` tasks; ``given``: a
    store to use instead of a new one of ``kind`` (``bench_store_writes.py`` records with it).
    ``direct``: the MUX device's copies instead of the scheduler's (see :func:`direct_block`);
    with ``alone``, one message each, received by the shell's own loop (see :func:`feed_alone`).
    ``inspect(hub, store)`` is called once every copy is written, before the store closes
    (``bench_hub_memory.py`` measures what they hold then)."""
    from corral import heap
    from corral.bundles import bundle
    from corral.controller import destination
    from corral.controller.hub import Hub
    from corral.controller.hub_shell import HubShell
    from corral.controller.store import MemoryStore, ResultStore, RetentionSettings, SQLiteStore
    from corral.loop import Loop
    from corral.protocol.serialize import pack_apply_message
    from corral.protocol.session import DELIMITER, Session, frame_view, new_key
    from corral.sharedmem import SharedMemory

    key = new_key()
    hub_session = Session(key, username="controller", check_msg_type=False)
    client = Session(key, username="user")
    engine = Session(key, username="corral")
    scheduler = Session(key, username="scheduler")
    store: ResultStore = (
        given
        if given is not None
        else SQLiteStore(folder / "tasks.db", retention=RetentionSettings())
        if kind == "sqlite"
        else MemoryStore(RetentionSettings())
    )
    context = zmq.Context()
    sockets: dict[str, Any] = {}
    kinds = {
        "registration": zmq.ROUTER,
        "notification": zmq.PUB,
        "ping": zmq.PUB,
        "pong": zmq.ROUTER,
        "monitor": zmq.SUB,
        "queue_monitor": zmq.SUB,
    }
    for name, socket_type in kinds.items():
        sockets[name] = context.socket(socket_type)
    sockets["pong_events"] = sockets["pong"].get_monitor_socket(zmq.EVENT_DISCONNECTED)
    # alone, the shell's loop runs, and with it the beat: no engine answers it here, so a
    # beat long enough that the engine is not dropped while the run lasts
    hub = Hub(store, {}, {}, heartbeat_period=3600.0 if alone else 3.0)
    loop = Loop("bench")
    # as the controller runs it: the scheduler's copies over its private socket (a tree from
    # before that had no such option and checked every copy)
    trusted = {"trusted_copies": True} if _takes(HubShell, "trusted_copies") else {}
    shell = HubShell(
        loop, hub, hub_session, store, SharedMemory(None, hub=True), sockets, print, **trusted
    )
    publisher = context.socket(zmq.PUB)  # plays the MUX device's monitor PUB (alone)
    if alone:
        publisher.sndhwm = 0
        sockets["queue_monitor"].rcvhwm = 0
        sockets["queue_monitor"].subscribe(b"")
        sockets["queue_monitor"].bind("inproc://bench-monitor-mux")
        publisher.connect("inproc://bench-monitor-mux")
        monitor_sub = sockets["queue_monitor"]
        while True:  # until the subscription reached the publisher (probes read here)
            publisher.send(b"probe")
            if monitor_sub.poll(10):
                break
        while monitor_sub.poll(10):
            monitor_sub.recv()
    try:
        uuid = "a6f7a72a-f42a-46e2-8447-8860fbb91a7e"
        registration = client.msg("registration_request", {"uuid": uuid})
        hub.handle_request([uuid.encode()], registration, time.time())
        payload, _ = hub.tick(time.time())
        hub.handle_pong(uuid, payload, time.time())
        assert uuid in hub.by_uuid
        buffers = [bytes(b) for b in pack_apply_message(one, (), {})]
        metadata = {"shm_reader": {"host": "49c12acfdd61cb5aec0c34c0fc34c095", "pid": 1}}
        reply_metadata = {
            "engine_uuid": uuid,
            "engine_id": 0,
            "status": "ok",
            "started": "2026-11-30T15:20:59.126589+00:00",
            "completed": "2026-11-30T15:20:59.127009+00:00",
            "stdout": "",
            "stderr": "",
            "engine_host": "vm",
            "call": "one()",
        }
        route = client.session_id.encode()
        # a tree whose scheduler names a turn's dispatches in one task_dest copy
        batched = getattr(destination, "destinations_frames", None)
        replies: list[list[bytes]] = []
        waited: list[Any] = []  # each task's msg_id if it waited for an engine, else None
        # as the controller does once it is set up (a tree from before the Hub's own threshold:
        # the default one)
        hub_young = getattr(heap, "HUB_YOUNG_THRESHOLD", None)
        if hub_young is not None:
            heap.settle(hub_young)
        else:
            heap.settle()
        # a block's copies come as one bundle, read as the Hub's loop reads the scheduler's
        handle = getattr(shell, "_on_scheduler_message", None) or (
            lambda frames: loop.deliver(shell._on_scheduler_copy, frames)
        )
        feeding = 0.0
        started_thread = time.thread_time()
        started_process = time.process_time()
        paced = time.perf_counter()
        for first in range(0, tasks, BLOCK):
            if direct and alone:
                feeding += feed_alone(
                    loop,
                    shell,
                    publisher,
                    direct_block(client, engine, uuid, first, tasks, buffers, None),
                )
                if rate:
                    time.sleep(max(0.0, paced + (first + BLOCK) / rate - time.perf_counter()))
                continue
            if direct:
                for published in direct_block(client, engine, uuid, first, tasks, buffers, bundle):
                    began = time.thread_time()
                    shell._on_device_message(published)  # what the loop calls
                    feeding += time.thread_time() - began
                if rate:
                    time.sleep(max(0.0, paced + (first + BLOCK) / rate - time.perf_counter()))
                continue
            # built just before they are fed, as copies are received just before they are read
            streams: list[list[Any]] = []
            answered: list[int] = []  # the tasks whose replies this block carries
            for index in range(first, min(tasks, first + BLOCK)):
                request = client.msg("apply_request", {}, metadata=metadata, buffers=buffers)
                frames = client.serialize(request)
                waits = index % 100 < waiting * 100
                path = [route] if waits else [route, uuid.encode()]
                streams.append([b"task_in", *path, *(bytes(frame_view(f)) for f in frames)])
                waited.append(request.msg_id if waits else None)
                reply = engine.msg(
                    "apply_reply",
                    {"status": "ok"},
                    parent=request,
                    metadata=reply_metadata,
                    buffers=[b"CRL\x01\x12\xe9\x18\xf9\x80\x05K\x01."],
                )
                copy = [route, uuid.encode(), DELIMITER, *engine.serialize(reply)[1:]]
                replies.append([b"task_out", *(bytes(frame_view(f)) for f in copy)])
                if index >= lag:
                    answered.append(index - lag)
            if first + BLOCK >= tasks:
                answered.extend(range(max(0, tasks - lag), tasks))
            # a task that waited was dispatched when an engine came free, shortly before its
            # reply: the scheduler's turn that sent it names it in one task_dest copy, before
            # the replies (a tree whose copy names one dispatch: a copy each)
            dispatched = [(waited[i], uuid, 0) for i in answered if waited[i] is not None]
            for at in range(0, len(dispatched) if batched is not None else 0, 256):
                streams.append(batched(scheduler, dispatched[at : at + 256], signed=not trusted))
            for msg_id, _, _ in dispatched if batched is None else ():
                dest = destination.destination_frames(scheduler, msg_id, uuid, 0)
                streams.append([zmq.Frame(f) for f in dest])
            streams.extend(replies[i] for i in answered)
            for i in answered:  # fed once: what the Hub keeps is all that stays
                replies[i] = FED
                waited[i] = None
            # the last block's tail of replies (--lag of them) in bundles a bundle can hold
            for at in range(0, len(streams), 1000):
                copies = bundle([], streams[at : at + 1000])
                began = time.thread_time()
                handle(copies)
                feeding += time.thread_time() - began
            if rate:  # the store's writer sees the pace of a cluster, not a flood
                time.sleep(max(0.0, paced + (first + BLOCK) / rate - time.perf_counter()))
        store.flush()
        thread = time.thread_time() - started_thread
        process = time.process_time() - started_process
        done = len(store.find_records({"status": "ok"}, ["msg_id"]))
        if done != tasks or hub.pending:
            raise SystemExit(f"{done} of {tasks} tasks recorded as done")
        if inspect is not None:
            inspect(hub, store)
        return feeding / tasks * 1e6, (process - thread) / tasks * 1e6
    finally:
        store.close()
        loop.close()
        for sock in (*sockets.values(), publisher):
            sock.close(0)
        context.term()


def _takes(cls: Any, name: str) -> bool:
    """Whether ``cls`` takes the keyword ``name`` (an older tree's may not). A class compiled
    by mypyc has no signature to inspect: every tree with compiled modules (issue 13, round
    fifteen on) takes the options this script asks about."""
    try:
        return name in signature(cls).parameters
    except ValueError:
        return True


def feed_alone(loop: Any, shell: Any, publisher: Any, copies: list[list[bytes]]) -> float:
    """Publish ``copies`` (one message each) to the shell's device monitor and run its loop
    until it has read them: the thread CPU seconds of those turns (receiving included, as the
    tree's loop receives)."""
    target = shell.monitored + len(copies)
    for frames in copies:
        publisher.send_multipart(frames, copy=True)
    began = time.thread_time()
    deadline = time.monotonic() + 30.0
    while shell.monitored < target:
        if time.monotonic() > deadline:
            raise SystemExit(f"the Hub read {shell.monitored} of {target} copies in 30 s")
        loop._turn()  # noqa: SLF001 - one turn of the shell's own loop, as it runs
    return time.thread_time() - began


def direct_block(
    client: Any, engine: Any, uuid: str, first: int, tasks: int, buffers: Any, bundle: Any
) -> list[list[Any]]:
    """A block of direct tasks as the MUX device publishes its copies when the client and the
    engine bundle (``[b"mux_in", engine, client, <bundle>]``, then ``[b"mux_out", client,
    engine, <bundle>]`` with their replies), every frame a received ``zmq.Frame``. With
    ``bundle`` None, each copy alone, as bytes to publish (``[b"mux_in", engine, client,
    DELIMITER, ...]``, the requests' then the replies')."""
    from corral.protocol.session import DELIMITER

    requests = [
        client.msg("apply_request", {}, buffers=buffers)
        for _ in range(first, min(tasks, first + BLOCK))
    ]
    replies = [
        engine.msg(
            "apply_reply",
            {"status": "ok"},
            parent=request,
            metadata={
                "engine_uuid": uuid,
                "engine_id": 0,
                "status": "ok",
                "stdout": "",
                "stderr": "",
            },
            buffers=[b"CRL\x01\x12\xe9\x18\xf9\x80\x05K\x01."],
        )
        for request in requests
    ]
    peer = client.session_id.encode()
    if bundle is None:
        return [
            [b"mux_in", uuid.encode(), peer, *map(bytes, client.serialize(m))] for m in requests
        ] + [[b"mux_out", peer, uuid.encode(), *map(bytes, engine.serialize(m))] for m in replies]
    copies_in = bundle(
        [b"mux_in", uuid.encode(), peer], [[DELIMITER, *client.serialize(m)[1:]] for m in requests]
    )
    copies_out = bundle(
        [b"mux_out", peer, uuid.encode()], [[DELIMITER, *engine.serialize(m)[1:]] for m in replies]
    )
    return [[zmq.Frame(bytes(frame)) for frame in copies] for copies in (copies_in, copies_out)]


def feed_options(
    parser: argparse.ArgumentParser, *, lag: int = LAG, waiting: float = WAITING, rate: float = RATE
) -> None:
    """The options of a run that feeds the Hub's writes (also bench_store_writes.py's)."""
    parser.add_argument("--tasks", type=int, default=TASKS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--lag", type=int, default=lag)
    parser.add_argument("--waiting", type=float, default=waiting)
    parser.add_argument("--rate", type=float, default=rate, help="tasks/s; 0: at once")
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    feed_options(parser)
    parser.add_argument(
        "--direct", action="store_true", help="the MUX device's copies (signed, checked)"
    )
    parser.add_argument(
        "--alone",
        action="store_true",
        help="with --direct: one copy per message, read from a socket by the shell's loop",
    )
    args = parser.parse_args()
    origin = use_source()
    hub_us: list[float] = []
    writer_us: list[float] = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-hub-") as folder:
            thread, writer = run_once(
                args.tasks,
                args.lag,
                args.waiting,
                Path(folder),
                args.store,
                args.rate,
                direct=args.direct,
                alone=args.alone,
            )
        hub_us.append(thread)
        writer_us.append(writer)
        print(
            f"  Hub thread {thread:6.1f} us/task, writer {writer:6.1f}, "
            f"total {thread + writer:6.1f}"
        )
    hub = statistics.median(hub_us)
    writer = statistics.median(writer_us)
    total = statistics.median(h + w for h, w in zip(hub_us, writer_us, strict=True))
    print(
        f"{args.tasks} tasks x {args.repeats}, median CPU us per task: Hub thread {hub:.1f}, "
        f"writer {writer:.1f}, total {total:.1f}"
    )
    write_results(
        "hub_copies",
        {
            "settings": vars(args) | {"corral": str(origin)},
            "hub_thread_us": hub_us,
            "writer_us": writer_us,
            "median_us": {"hub_thread": hub, "writer": writer, "total": total},
        },
    )


if __name__ == "__main__":
    main()
