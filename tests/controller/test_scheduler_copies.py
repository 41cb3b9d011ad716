"""The scheduler shell's copies for the Hub, with real sockets: a task dispatched at once is
announced by one ``task_in`` copy that names its engine; a task that waits for an engine by a
``task_in`` copy without one and a ``task_dest`` when it leaves; every task by a ``task_out``."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import zmq

from corral.bundles import MARK, Outbox, split_bundle
from corral.controller.destination import read_destinations
from corral.controller.scheduler_shell import SchedulerShell
from corral.protocol.session import Message, Session, frame_view
from tests.polling import until
from tests.wire import readable, recv_one

KEY = b"scheduler-copies-key"
LOOPBACK = "tcp://127.0.0.1"
WAIT = 30.0  # seconds: generous for a loaded machine, still bounded


@dataclass
class Rig:
    session: Session
    context: zmq.Context[Any]
    notifications: zmq.Socket[Any]  # the Hub's PUB, as the scheduler's SUB sees it
    monitor: zmq.Socket[Any]  # the Hub's monitor SUB
    client: zmq.Socket[Any]
    engine: zmq.Socket[Any]
    copies: list[tuple[bytes, list[bytes], Message | str]]  # a task_dest: each msg_id
    hub_session: Session  # the Hub's side: verifies (and remembers) what it reads
    shell: SchedulerShell | None = None
    trusted: bool = False  # the scheduler was told the Hub does not check its copies

    def read_copies(self) -> None:
        while readable(self.monitor):
            frames = recv_one(self.monitor)
            if frames[0] == b"task_dest":  # compact: about (msg_id, engine), not an envelope
                if self.trusted:  # unsigned: a Hub that checks refuses it
                    assert frames[1] == b""
                for msg_id, _ in read_destinations(
                    self.hub_session, frames, verify=not self.trusted
                ):
                    self.copies.append((frames[0], [], msg_id))
                continue
            prefix, *rest = frames
            idents = rest[: rest.index(b"<IDS|MSG>")]
            self.copies.append((prefix, idents, self.hub_session.feed(rest)))

    def copies_of(self, msg_id: str) -> list[tuple[bytes, list[bytes]]]:
        """(prefix, identities) of every copy about ``msg_id`` received so far, in order."""
        self.read_copies()
        found = []
        for prefix, idents, copy in self.copies:
            if isinstance(copy, str):
                about: str | None = copy
            else:
                about = {b"task_in": copy.msg_id, b"task_out": copy.parent_id}.get(prefix)
            if about == msg_id:
                found.append((prefix, idents))
        return found

    def request(self) -> Message:
        msg = self.session.msg("apply_request", {}, buffers=[b"function-and-arguments"])
        self.client.send_multipart(self.session.serialize(msg))
        return msg


@pytest.fixture(params=[False, True], ids=["checked", "trusted"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    trusted: bool = request.param
    session = Session(KEY)
    context: zmq.Context[Any] = zmq.Context()
    sockets: list[zmq.Socket[Any]] = []

    def socket(kind: int) -> zmq.Socket[Any]:
        sock = context.socket(kind)
        sock.linger = 0
        sockets.append(sock)
        return sock

    notifications = socket(zmq.PUB)
    notification_port = notifications.bind_to_random_port(LOOPBACK)
    monitor = socket(zmq.SUB)
    monitor.subscribe(b"")
    monitor_port = monitor.bind_to_random_port(LOOPBACK)
    settings = {
        "key": KEY.decode(),
        "signature_scheme": "hmac-sha256",
        "url": LOOPBACK,
        "notification": f"{LOOPBACK}:{notification_port}",
        "monitor": f"{LOOPBACK}:{monitor_port}",
        "trusted_copies": trusted,
        "long_task": 0,  # engines prefetch from the first task (tests/.../test_scheduling_long.py)
    }
    shell = SchedulerShell(settings)
    thread = threading.Thread(target=shell.loop.run, name="scheduler-under-test")
    thread.start()
    try:
        client = socket(zmq.DEALER)
        client.identity = b"client-1"
        client.connect(f"{LOOPBACK}:{shell.client_port}")
        engine = socket(zmq.DEALER)
        engine.identity = b"engine-1"
        engine.connect(f"{LOOPBACK}:{shell.engine_port}")
        yield Rig(
            session,
            context,
            notifications,
            monitor,
            client,
            engine,
            [],
            Session(KEY),
            shell,
            trusted,
        )
    finally:
        shell.loop.stop()
        thread.join(WAIT)
        shell.close()
        for sock in sockets:
            sock.close(0)
        context.term()
    assert not thread.is_alive(), "the scheduler's loop did not stop"


def recv_message(rig: Rig, sock: zmq.Socket[Any]) -> tuple[list[bytes], Message]:
    assert readable(sock, int(WAIT * 1000)), "nothing arrived"
    frames = recv_one(sock)
    split = frames.index(b"<IDS|MSG>")
    return frames[:split], Session(KEY).feed(frames)  # a copy may carry the same signature


def monitor_link_up(rig: Rig) -> None:
    """Wait until copies reach the monitor SUB (a PUB drops what it sends before the SUB's
    subscription arrives): requests the scheduler refuses at once, until one is copied."""

    def refused_and_copied() -> bool:
        msg = rig.session.msg("clear_request", {})
        rig.client.send_multipart(rig.session.serialize(msg))
        recv_message(rig, rig.client)  # the refusal
        return bool(rig.copies_of(msg.msg_id))

    until(refused_and_copied, WAIT, "the scheduler's monitor link")


def test_copies_name_the_engine_at_once_or_follow_with_task_dest(rig: Rig) -> None:
    monitor_link_up(rig)
    # no engine yet: the request waits, and the Hub hears of it without a destination
    waiting = rig.request()
    until(lambda: rig.copies_of(waiting.msg_id), WAIT, "the waiting task's task_in copy")
    assert rig.copies_of(waiting.msg_id) == [(b"task_in", [b"client-1"])]

    def announce() -> bool:  # PUB/SUB: repeated until the scheduler heard it
        note = rig.session.msg("registration_notification", {"id": 0, "uuid": "engine-1"})
        rig.notifications.send_multipart(rig.session.serialize(note))
        return bool(rig.engine.poll(50))

    until(announce, WAIT, "the scheduler to send the waiting task to the new engine")
    idents, dispatched = recv_message(rig, rig.engine)
    assert (idents, dispatched.msg_id) == ([b"client-1"], waiting.msg_id)
    assert [bytes(b) for b in dispatched.buffers] == [b"function-and-arguments"]
    until(lambda: len(rig.copies_of(waiting.msg_id)) == 2, WAIT, "the task_dest copy")
    assert rig.copies_of(waiting.msg_id)[1] == (b"task_dest", [])

    # an engine is free: one copy, naming it, and no task_dest
    at_once = rig.request()
    idents, dispatched = recv_message(rig, rig.engine)
    assert (idents, dispatched.msg_id) == ([b"client-1"], at_once.msg_id)
    until(lambda: rig.copies_of(at_once.msg_id), WAIT, "the dispatched task's copy")
    assert rig.copies_of(at_once.msg_id) == [(b"task_in", [b"client-1", b"engine-1"])]

    for request in (waiting, at_once):
        reply = rig.session.msg("apply_reply", {"status": "ok"}, parent=request)
        rig.engine.send_multipart([b"client-1", *rig.session.serialize(reply)])
        idents, answer = recv_message(rig, rig.client)
        assert (idents, answer.parent_id) == ([b"engine-1"], request.msg_id)
    for msg_id in (waiting.msg_id, at_once.msg_id):
        until(lambda: rig.copies_of(msg_id)[-1][0] == b"task_out", WAIT, "task_out copies")  # noqa: B023
        assert rig.copies_of(msg_id)[-1] == (b"task_out", [b"client-1", b"engine-1"])
    assert len(rig.copies_of(at_once.msg_id)) == 2  # task_in naming the engine, task_out


def test_a_burst_leaves_in_bundles(rig: Rig) -> None:
    """Tasks waiting when an engine comes leave in the turn it came: one zmq message to the
    engine holding as many as it may take (max_outstanding, 16), and one ``task_dest`` copy
    naming them all to the Hub; the engine's replies in one bundle reach the client, every
    one of them."""
    monitor_link_up(rig)
    waiting = [rig.request() for _ in range(20)]
    until(lambda: all(rig.copies_of(m.msg_id) for m in waiting), WAIT, "their task_in copies")
    assert rig.shell is not None
    # on the scheduler's thread: a count read from here may miss the send of copies already
    # received (the count follows the send), and that send would then count as this burst's
    done: queue.Queue[dict[str, dict[str, int]]] = queue.Queue()
    under_test = rig.shell
    under_test.loop.call_soon_threadsafe(lambda: done.put(under_test.sends()))
    before = done.get(timeout=WAIT)

    def announce() -> bool:  # PUB/SUB: repeated until the scheduler heard it
        note = rig.session.msg("registration_notification", {"id": 0, "uuid": "engine-1"})
        rig.notifications.send_multipart(rig.session.serialize(note))
        return bool(rig.engine.poll(50))

    until(announce, WAIT, "the scheduler to send the waiting tasks to the new engine")
    bundle = split_bundle(rig.engine.recv_multipart(copy=False))
    assert bundle is not None, "the first 16 tasks came as single messages"
    dispatched = [Session(KEY).feed(frames) for frames in bundle]
    assert [m.msg_id for m in dispatched] == [m.msg_id for m in waiting[:16]]
    assert all(m.idents == (b"client-1",) for m in dispatched)
    for request in waiting[:16]:
        until(lambda: len(rig.copies_of(request.msg_id)) == 2, WAIT, "task_dest copies")  # noqa: B023
    shell = rig.shell

    def sent(peer: str) -> tuple[int, int]:  # counted on the scheduler's thread after a send
        now = shell.sends()[peer]
        return (
            now["messages"] - before[peer]["messages"],
            now["zmq_messages"] - before[peer]["zmq_messages"],
        )

    until(lambda: sent("hub")[1] > 0, WAIT, "the scheduler to count its send to the Hub")
    assert sent("engines") == (16, 1)
    assert sent("hub") == (1, 1)  # one task_dest copy names the turn's 16 dispatches

    replies = Outbox(rig.engine, 0)  # as an engine answers a burst
    for request in dispatched:
        reply = rig.session.msg("apply_reply", {"status": "ok"}, parent=request)
        replies.put([b"client-1", *rig.session.serialize(reply)])
    replies.flush()
    answered = [recv_message(rig, rig.client)[1].parent_id for _ in range(16)]
    assert answered == [m.msg_id for m in waiting[:16]]
    rest = [recv_message(rig, rig.engine)[1].msg_id for _ in range(4)]  # slots freed
    assert rest == [m.msg_id for m in waiting[16:]]


def raw_copies_until(
    rig: Rig, wanted: set[str], found: dict[str, list[list[bytes]]]
) -> list[list[bytes]]:
    """The zmq messages on the Hub's monitor (as they came, not unbundled) until copies of
    every msg_id in ``wanted`` came; ``found``: each msg_id's copies, unbundled."""
    raw: list[list[bytes]] = []
    while not wanted <= found.keys():
        assert rig.monitor.poll(int(WAIT * 1000)), f"no copy of {sorted(wanted - found.keys())}"
        frames = rig.monitor.recv_multipart()
        raw.append(frames)
        for message in split_bundle(frames) or [frames]:
            copy = [bytes(frame_view(frame)) for frame in message]
            if copy[0] == b"task_in":
                msg = rig.hub_session.feed(copy)  # verified as the Hub verifies it
                found.setdefault(msg.msg_id, []).append(copy)
    return raw


def test_a_clients_bundle_of_waiting_requests_reaches_the_hub_as_it_came(rig: Rig) -> None:
    """No engine: every request of a client's bundle waits, so the bundle itself is their
    task_in copies, behind the prefix (one zmq message, laid out by the client only); each
    unbundles to the copy it would have had alone."""
    monitor_link_up(rig)
    requests = [
        rig.session.msg("apply_request", {}, buffers=[b"function-and-arguments %d" % index])
        for index in range(5)
    ]
    outbox = Outbox(rig.client, 0)  # as a client sends a burst
    for msg in requests:
        outbox.put(rig.session.serialize(msg))
    outbox.flush()
    found: dict[str, list[list[bytes]]] = {}
    raw = raw_copies_until(rig, {m.msg_id for m in requests}, found)
    assert raw[-1][:3] == [b"task_in", b"client-1", MARK]
    for msg in requests:
        alone = [b"task_in", b"client-1", *rig.session.serialize(msg)]
        assert found[msg.msg_id] == [[bytes(frame_view(frame)) for frame in alone]]


def test_a_bundle_with_a_request_not_held_gets_a_copy_per_request(rig: Rig) -> None:
    """A bundle holding a request the scheduler drops (the same one twice: a replay) is not
    passed on: each request it holds gets its own copy, and the dropped one none."""
    monitor_link_up(rig)
    first, second = (
        rig.session.msg("apply_request", {}, buffers=[b"function-and-arguments"]) for _ in "12"
    )
    outbox = Outbox(rig.client, 0)
    for msg in (first, first, second):
        outbox.put(rig.session.serialize(msg))
    outbox.flush()
    found: dict[str, list[list[bytes]]] = {}
    raw = raw_copies_until(rig, {first.msg_id, second.msg_id}, found)
    assert raw[-1][0] == MARK  # the scheduler's own bundle of copies, no route
    for msg in (first, second):  # one copy each
        alone = [b"task_in", b"client-1", *rig.session.serialize(msg)]
        assert found[msg.msg_id] == [[bytes(frame_view(frame)) for frame in alone]]


def test_a_malformed_or_forged_bundle_never_reaches_the_hub(rig: Rig) -> None:
    """The Hub trusts the scheduler's copies: a client's bundle the scheduler could not read
    whole (a layout that does not match, a request signed with another key) is not passed
    on; the next copy the Hub gets is the next good request's."""
    monitor_link_up(rig)
    good = rig.session.msg("apply_request", {}, buffers=[b"function-and-arguments"])
    forged = Session(b"another key").msg("apply_request", {}, buffers=[b"function"])
    layout = (2).to_bytes(8, "little") + (1).to_bytes(8, "little") + (99).to_bytes(8, "little")
    rig.client.send_multipart([MARK, layout, b"short"])  # names more than it holds
    outbox = Outbox(rig.client, 0)
    outbox.put(Session(b"another key").serialize(forged))
    outbox.put(rig.session.serialize(good))
    outbox.flush()
    found: dict[str, list[list[bytes]]] = {}
    raw = raw_copies_until(rig, {good.msg_id}, found)
    assert forged.msg_id not in found
    assert raw[-1][0] == MARK  # the good request's own copy, from the scheduler's bundle
    assert not any(frames[0] == b"task_in" and MARK in frames[:3] for frames in raw)
