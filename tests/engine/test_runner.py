"""TaskRunner without sockets: every request gets one reply, iopub in order, errors contained."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from corral.engine.interrupts import InterruptGate
from corral.engine.runner import (
    QUEUE_MARK,
    AbortList,
    EngineIdentity,
    QueueMark,
    Request,
    TaskRunner,
    WorkQueue,
    error_reply_msg,
    reply_type,
)
from corral.errors import UnknownMessageType
from corral.protocol.references import Reference
from corral.protocol.serialize import deserialize_object, pack_apply_message
from corral.protocol.session import Message, Session

KEY = b"runner-test-key"
REPLY_METADATA = {"engine_uuid", "engine_id", "status", "started", "completed", "stdout", "stderr"}


class Wire:
    """Plays both ends: builds requests as a client would, decodes what the runner sends."""

    def __init__(self) -> None:
        self.client = Session(KEY)
        self.engine = Session(KEY, check_msg_type=False)
        self.sent: list[tuple[bytes, list[bytes]]] = []
        self.on_send: threading.Event = threading.Event()

    def __call__(self, channel: bytes, frames: Any) -> None:
        self.sent.append((channel, [bytes(memoryview(frame)) for frame in frames]))
        self.on_send.set()

    def request(self, msg_type: str, content: dict[str, Any], buffers: Any = ()) -> Request:
        msg = self.client.msg(msg_type, content, buffers=buffers)
        frames = [bytes(memoryview(f)) for f in self.client.serialize(msg, [b"client-1"])]
        return Request(b"mux", self.engine.feed(frames))

    def apply(self, f: Any, *args: Any, **kwargs: Any) -> Request:
        return self.request("apply_request", {}, pack_apply_message(f, args, kwargs))

    def replies(self) -> list[Message]:
        reader = Session(KEY)  # fresh each time: a second read would be a replay
        return [reader.feed(frames) for channel, frames in self.sent if channel == b"mux"]

    def iopub(self) -> list[tuple[bytes, Message]]:
        reader = Session(KEY)
        return [
            (frames[0], reader.feed(frames[1:]))
            for channel, frames in self.sent
            if channel == b"iopub"
        ]

    def iopub_types(self) -> list[str]:
        return [msg.msg_type for _, msg in self.iopub()]


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.fixture
def runner(wire: Wire) -> TaskRunner:
    return TaskRunner(wire.engine, EngineIdentity("engine-uuid", 3), wire)


def only_reply(wire: Wire, request: Request) -> Message:
    replies = wire.replies()
    assert len(replies) == 1
    reply = replies[0]
    assert reply.idents == (b"client-1",)
    assert reply.parent_header == request.msg.header
    assert REPLY_METADATA <= set(reply.metadata)
    assert reply.metadata["engine_uuid"] == "engine-uuid"
    assert reply.metadata["engine_id"] == 3
    return reply


def test_apply_with_numpy_arguments(wire: Wire, runner: TaskRunner) -> None:
    array = np.arange(10_000, dtype=np.float64)
    request = wire.apply(lambda a, scale: a * scale, array, scale=2.0)
    runner.run(request)
    reply = only_reply(wire, request)
    assert reply.msg_type == "apply_reply"
    assert reply.content == {"status": "ok"}
    assert reply.metadata["status"] == "ok"
    np.testing.assert_array_equal(deserialize_object(list(reply.buffers)), array * 2)
    assert wire.iopub_types() == []  # apply tasks publish no busy/idle status
    assert all(msg.parent_header == request.msg.header for _, msg in wire.iopub())


def test_an_apply_reply_is_dated_when_its_task_completed(wire: Wire, runner: TaskRunner) -> None:
    """The usual reply is built without Session.msg (no check, no copy): it still reads as a
    checked apply_reply (the test's reader validates content), dated at ``completed``, with
    the call described and the output of each task its own."""
    quiet = wire.apply(abs, -2)
    runner.run(quiet)
    loud = wire.apply(print, "hello")
    runner.run(loud)
    first, second = wire.replies()
    assert first.header["date"] == first.metadata["completed"]
    assert first.metadata["started"] <= first.metadata["completed"]
    assert first.content == {"status": "ok"}
    assert first.metadata["call"] == "abs(-2)"
    assert (first.metadata["stdout"], second.metadata["stdout"]) == ("", "hello\n")
    assert deserialize_object(list(first.buffers)) == 2
    assert first.header["msg_id"] != second.header["msg_id"]
    assert first.header["session"] == wire.engine.session_id


def test_execute_streams_and_returns_the_result(wire: Wire, runner: TaskRunner) -> None:
    request = wire.request("execute_request", {"code": "print('hi')\nx = 6\nx * 7"})
    runner.run(request)
    reply = only_reply(wire, request)
    assert reply.msg_type == "execute_reply"
    assert reply.content == {"status": "ok", "execution_count": 1}
    assert reply.metadata["stdout"] == "hi\n"
    assert reply.metadata["execute_result"] == {"text/plain": "42"}
    assert wire.iopub_types() == ["status", "execute_input", "stream", "execute_result", "status"]
    messages = dict((msg.msg_type, msg.content) for _, msg in wire.iopub())
    assert messages["stream"] == {"name": "stdout", "text": "hi\n"}
    assert messages["execute_input"] == {"code": "print('hi')\nx = 6\nx * 7", "execution_count": 1}
    assert messages["execute_result"]["data"] == {"text/plain": "42"}  # type: ignore[index]


def test_silent_execute_publishes_no_input_or_result(wire: Wire, runner: TaskRunner) -> None:
    runner.run(wire.request("execute_request", {"code": "1 + 1", "silent": True}))
    assert wire.iopub_types() == ["status", "status"]
    reply = wire.replies()[0]
    assert reply.metadata["execute_result"] == {"text/plain": "2"}
    assert reply.content == {"status": "ok", "execution_count": 0}  # silent does not count


def test_execute_without_a_result(wire: Wire, runner: TaskRunner) -> None:
    runner.run(wire.request("execute_request", {"code": "y = 1"}))
    assert wire.replies()[0].metadata["execute_result"] is None


def test_user_error_gives_error_reply_and_iopub_error(wire: Wire, runner: TaskRunner) -> None:
    def fails(x: int) -> None:
        raise ValueError(f"bad {x}")

    request = wire.apply(fails, 5)
    runner.run(request)
    reply = only_reply(wire, request)
    content = reply.content
    assert content is not None
    assert (content["status"], content["ename"], content["evalue"]) == (
        "error",
        "ValueError",
        "bad 5",
    )
    assert content["engine_info"] == {"engine_id": 3, "engine_uuid": "engine-uuid"}
    text = "\n".join(content["traceback"])
    assert "in fails" in text
    assert "corral/engine" not in text
    assert reply.buffers == ()
    assert reply.metadata["status"] == "error"
    assert wire.iopub_types() == ["error"]
    assert [topic for topic, _ in wire.iopub()] == [b"engine.3.error"]


@pytest.mark.parametrize(
    ("code", "ename"),
    [
        ("raise SystemExit(3)", "SystemExit"),
        ("raise KeyboardInterrupt", "KeyboardInterrupt"),
        ("import sys; sys.exit()", "SystemExit"),
        ("def (:", "SyntaxError"),
        ("undefined_name", "NameError"),
    ],
)
def test_anything_user_code_raises_is_an_error_reply(
    wire: Wire, runner: TaskRunner, code: str, ename: str
) -> None:
    runner.run(wire.request("execute_request", {"code": code}))
    runner.run(wire.request("execute_request", {"code": "'still alive'"}))
    first, second = wire.replies()
    assert first.content is not None and first.content["ename"] == ename
    assert second.metadata["execute_result"] == {"text/plain": "'still alive'"}


def test_unpicklable_result_is_a_serialization_error(wire: Wire, runner: TaskRunner) -> None:
    runner.run(wire.apply(threading.Lock))
    runner.run(wire.apply(lambda: "fine"))
    first, second = wire.replies()
    assert first.content is not None
    assert first.content["ename"] == "SerializationError"
    assert "lock" in first.content["evalue"]
    assert deserialize_object(list(second.buffers)) == "fine"


def test_garbage_apply_buffers_are_a_serialization_error(wire: Wire, runner: TaskRunner) -> None:
    runner.run(wire.request("apply_request", {}, [b"not a pickle"]))
    runner.run(wire.request("apply_request", {}, []))
    for reply in wire.replies():
        assert reply.content is not None
        assert reply.content["ename"] == "SerializationError"


def test_references_and_interactive_writes(wire: Wire, runner: TaskRunner) -> None:
    runner.run(wire.request("execute_request", {"code": "a = 21"}))
    runner.run(wire.apply(lambda x: x * 2, Reference("a")))
    assert deserialize_object(list(wire.replies()[1].buffers)) == 42


def test_clear_request_empties_the_namespace_and_answers_on_control(
    wire: Wire, runner: TaskRunner
) -> None:
    runner.run(wire.request("execute_request", {"code": "a = 21"}))
    msg = wire.request("clear_request", {}).msg
    runner.run(Request(b"control", msg))
    assert "a" not in runner.namespace
    reader = Session(KEY)
    replies = [reader.feed(frames) for channel, frames in wire.sent if channel == b"control"]
    assert [(r.msg_type, r.content, r.parent_id) for r in replies] == [
        ("clear_reply", {"status": "ok"}, msg.msg_id)
    ]
    assert {"engine_uuid", "engine_id", "status", "started", "completed"} <= set(
        replies[0].metadata
    )


def test_work_queue_puts_control_requests_ahead_of_queued_tasks(wire: Wire) -> None:
    work = WorkQueue()
    first, second = wire.apply(abs, -1), wire.apply(abs, -2)
    clear = Request(b"control", wire.request("clear_request", {}).msg)
    work.put(first)
    work.put(second)
    work.put_next(clear)
    assert [work.get_nowait() for _ in range(3)] == [clear, first, second]
    with pytest.raises(queue.Empty):
        work.get_nowait()


def test_aborted_task_never_runs(wire: Wire, runner: TaskRunner) -> None:
    request = wire.request("execute_request", {"code": "ran = True"})
    runner.aborts.add([request.msg.msg_id])
    runner.run(request)
    reply = only_reply(wire, request)
    assert reply.content is not None
    assert (reply.content["status"], reply.content["ename"]) == ("aborted", "TaskAborted")
    assert reply.metadata["status"] == "aborted"
    assert "ran" not in runner.namespace
    assert wire.iopub() == []


def run_queue(runner: TaskRunner, work: WorkQueue) -> None:
    """Run what is queued (marks included), as the engine's main thread does."""
    while not work.empty():
        runner.run(work.get_nowait())


def statuses(wire: Wire) -> dict[str, str]:
    return {str(reply.parent_id): (reply.content or {})["status"] for reply in wire.replies()}


@pytest.fixture
def work() -> WorkQueue:
    return WorkQueue()


@pytest.fixture
def marking_runner(wire: Wire, work: WorkQueue) -> TaskRunner:
    """A runner whose stop_on_error mark goes behind what is queued, as the I/O thread does."""
    return TaskRunner(
        wire.engine, EngineIdentity("engine-uuid", 3), wire, mark_queue=lambda: work.put(QUEUE_MARK)
    )


def test_failed_execute_aborts_the_executes_queued_behind_it(
    wire: Wire, work: WorkQueue, marking_runner: TaskRunner
) -> None:
    """Jupyter's stop_on_error: queued execute requests are aborted up to the mark; applies
    (a pull) still run; what is queued after the mark runs."""
    failing = wire.request("execute_request", {"code": "1/0", "silent": False})
    later = wire.request("execute_request", {"code": "later = 1", "silent": False})
    silent_later = wire.request("execute_request", {"code": "silent_later = 1", "silent": True})
    pull = wire.apply(lambda: 42)
    for request in (failing, later, pull, silent_later):
        work.put(request)
    run_queue(marking_runner, work)
    assert marking_runner.aborting is None  # the mark was reached
    replies = {reply.parent_id: reply for reply in wire.replies()}
    order = (failing, later, pull, silent_later)
    assert [statuses(wire)[request.msg.msg_id] for request in order] == [
        "error",
        "aborted",
        "ok",
        "aborted",
    ]
    aborted = replies[later.msg.msg_id]
    assert aborted.content is not None and aborted.content["ename"] == "TaskAborted"
    assert (
        failing.msg.msg_id in aborted.content["evalue"]
        and "stop_on_error" in aborted.content["evalue"]
    )
    assert deserialize_object(list(replies[pull.msg.msg_id].buffers)) == 42
    assert "later" not in marking_runner.namespace
    assert "silent_later" not in marking_runner.namespace
    after = wire.request("execute_request", {"code": "after = 1", "silent": False})
    work.put(after)
    run_queue(marking_runner, work)
    assert statuses(wire)[after.msg.msg_id] == "ok"
    assert marking_runner.namespace["after"] == 1


@pytest.mark.parametrize(
    "content",
    [{"code": "1/0", "silent": True}, {"code": "1/0", "stop_on_error": False}],
    ids=["silent", "stop_on_error_false"],
)
def test_a_silent_or_non_stopping_failure_aborts_nothing(
    wire: Wire, work: WorkQueue, marking_runner: TaskRunner, content: dict[str, Any]
) -> None:
    failing = wire.request("execute_request", content)
    later = wire.request("execute_request", {"code": "later = 1"})
    work.put(failing)
    work.put(later)
    run_queue(marking_runner, work)
    assert statuses(wire) == {failing.msg.msg_id: "error", later.msg.msg_id: "ok"}
    assert marking_runner.namespace["later"] == 1


def test_failed_apply_or_aborted_execute_aborts_nothing(
    wire: Wire, work: WorkQueue, marking_runner: TaskRunner
) -> None:
    """Only an execute's own failure stops the queue: not an apply's, nor an abort_request's."""
    failing_apply = wire.apply(lambda: 1 / 0)
    aborted = wire.request("execute_request", {"code": "x = 1"})
    later = wire.request("execute_request", {"code": "later = 1"})
    marking_runner.aborts.add([aborted.msg.msg_id])
    for request in (failing_apply, aborted, later):
        work.put(request)
    run_queue(marking_runner, work)
    assert statuses(wire) == {
        failing_apply.msg.msg_id: "error",
        aborted.msg.msg_id: "aborted",
        later.msg.msg_id: "ok",
    }


def test_the_mark_is_asked_for_before_the_failure_reply_is_sent(wire: Wire) -> None:
    """So a request its sender sends on seeing the failure is queued behind the mark."""
    events: list[str] = []

    def send(channel: bytes, frames: Any) -> None:
        if channel == b"mux":
            events.append("reply")

    runner = TaskRunner(
        wire.engine, EngineIdentity("u", 1), send, mark_queue=lambda: events.append("mark")
    )
    runner.run(wire.request("execute_request", {"code": "1/0"}))
    assert events == ["mark", "reply"]
    assert isinstance(QUEUE_MARK, QueueMark)


@pytest.fixture
def installed(runner: TaskRunner) -> Iterator[TaskRunner]:
    """``runner`` receives ``corral.datapub.publish_data`` calls, as an engine's does."""
    from corral.engine import datapub

    before = list(datapub._sinks)  # noqa: SLF001
    datapub.install(runner.publish_data)
    try:
        yield runner
    finally:
        datapub._sinks[:] = before  # noqa: SLF001


def test_publish_data_sends_data_messages_in_output_order(
    wire: Wire, installed: TaskRunner
) -> None:
    code = (
        "from corral.datapub import publish_data\n"
        "print('before')\n"
        "publish_data({'i': 1})\n"
        "publish_data(dict(i=2, j=[3]))"
    )
    request = wire.request("execute_request", {"code": code})
    installed.run(request)
    reply = only_reply(wire, request)
    assert reply.metadata["data_messages"] == 2
    published = [(topic, msg) for topic, msg in wire.iopub() if msg.msg_type != "status"]
    assert [msg.msg_type for _, msg in published] == [
        "execute_input",
        "stream",
        "data_message",
        "data_message",
    ]
    data = [msg for _, msg in published if msg.msg_type == "data_message"]
    assert [msg.content for msg in data] == [{"keys": ["i"]}, {"keys": ["i", "j"]}]
    assert [deserialize_object(list(msg.buffers)) for msg in data] == [{"i": 1}, {"i": 2, "j": [3]}]
    assert all(msg.parent_header == request.msg.header for msg in data)
    assert published[2][0] == b"engine.3.data_message"
    # a task that publishes nothing says nothing about it
    wire.sent.clear()
    quiet = wire.request("execute_request", {"code": "1"})
    installed.run(quiet)
    assert "data_messages" not in only_reply(wire, quiet).metadata


def test_publish_data_outside_a_task_or_with_bad_data_is_refused(
    wire: Wire, installed: TaskRunner
) -> None:
    from corral.datapub import publish_data

    with pytest.raises(RuntimeError, match="no task runs"):
        publish_data({"i": 1})
    with pytest.raises(TypeError, match="dict with str keys"):
        publish_data([1, 2])  # type: ignore[arg-type]
    request = wire.request(
        "execute_request",
        {
            "code": "from corral.datapub import publish_data\nimport threading\n"
            "publish_data({'lock': threading.Lock()})"
        },
    )
    installed.run(request)
    reply = only_reply(wire, request)
    assert reply.content is not None and reply.content["ename"] == "SerializationError"
    assert "data_messages" not in reply.metadata


def test_output_json_cannot_hold_is_escaped(wire: Wire, runner: TaskRunner) -> None:
    runner.run(wire.request("execute_request", {"code": "print('\\udcff')\n'\\udcff'"}))
    reply = wire.replies()[0]
    assert reply.metadata["stdout"] == "\\udcff\n"
    assert reply.content is not None and reply.content["status"] == "ok"


def test_stderr_goes_to_metadata_and_iopub(wire: Wire, runner: TaskRunner) -> None:
    runner.run(wire.request("execute_request", {"code": "import sys; print('e', file=sys.stderr)"}))
    assert wire.replies()[0].metadata["stderr"] == "e\n"
    streams = [msg.content for _, msg in wire.iopub() if msg.msg_type == "stream"]
    assert streams == [{"name": "stderr", "text": "e\n"}]


def test_error_reply_for_unknown_type_names_it(wire: Wire) -> None:
    request = wire.engine.feed(
        wire.client.serialize(
            Message(wire.client.header("frobnicate_request"), {}, {}, {}), [b"client-1"]
        )
    )
    identity = EngineIdentity("u", 1)
    reply = error_reply_msg(wire.engine, identity, request, UnknownMessageType("no such type"))
    assert reply.msg_type == "frobnicate_reply"
    assert reply.content is not None and reply.content["ename"] == "UnknownMessageType"
    assert reply_type("shutdown_request") == "shutdown_reply"


def test_abort_list_is_bounded() -> None:
    aborts = AbortList(limit=3)
    aborts.add(["a", "b", "c", "d"])
    assert not aborts.take("a")
    assert aborts.take("d")
    assert not aborts.take("d")


# ---------------------------------------------------------------------- SIGINT


@pytest.fixture
def gate() -> Iterator[InterruptGate]:
    gate = InterruptGate()
    previous = signal.signal(signal.SIGINT, gate.handle_sigint)
    try:
        yield gate
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupt_when(event: threading.Event, gate: InterruptGate) -> threading.Thread:
    """Send SIGINT to the main thread once ``event`` is set, as the engine's signal_request
    does: aimed at the main thread, and repeated until the handler has run."""
    main = threading.main_thread().ident
    assert main is not None

    def wait_and_kill() -> None:
        if not event.wait(5.0):
            return
        seen = gate.seen
        deadline = time.monotonic() + 5.0
        while gate.seen == seen and time.monotonic() < deadline:
            signal.pthread_kill(main, signal.SIGINT)
            time.sleep(0.05)

    thread = threading.Thread(target=wait_and_kill)
    thread.start()
    return thread


def test_sigint_interrupts_a_blocking_task(wire: Wire, gate: InterruptGate) -> None:
    runner = TaskRunner(wire.engine, EngineIdentity("u", 0), wire, gate=gate)
    request = wire.request("execute_request", {"code": "import time; time.sleep(30)"})
    wire.on_send.clear()
    thread = interrupt_when(wire.on_send, gate)  # the busy status is the first thing sent
    started = time.monotonic()
    runner.run(request)
    thread.join()
    assert time.monotonic() - started < 10
    reply = wire.replies()[0]
    assert reply.content is not None and reply.content["ename"] == "KeyboardInterrupt"
    assert all("corral/engine" not in line for line in reply.content["traceback"])


def test_sigint_while_idle_is_ignored(gate: InterruptGate) -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0)  # the handler runs between bytecodes; nothing must be raised


def test_shielded_send_defers_the_interrupt(gate: InterruptGate) -> None:
    gate.arm()
    gate.enter_task()
    with pytest.raises(KeyboardInterrupt):
        with gate.shielded():
            gate.handle_sigint(signal.SIGINT, None)
            reached = True
        raise AssertionError("the deferred interrupt was not raised")  # pragma: no cover
    assert reached
    gate.leave_task()


def test_interrupt_just_before_the_task_is_raised_when_it_starts(gate: InterruptGate) -> None:
    gate.arm()
    gate.handle_sigint(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        gate.enter_task()
    gate.leave_task()


def test_interrupt_after_the_task_or_while_idle_is_dropped(gate: InterruptGate) -> None:
    gate.handle_sigint(signal.SIGINT, None)  # idle
    gate.arm()
    gate.enter_task()
    gate.leave_task()
    gate.handle_sigint(signal.SIGINT, None)  # user code done: ignored
    gate.arm()
    gate.enter_task()  # no stale interrupt from before
    gate.leave_task()
    assert gate.seen == 2


def test_abort_of_the_running_request_interrupts_it(gate: InterruptGate) -> None:
    gate.arm("running")
    gate.enter_task()
    assert gate.request_abort(["other"]) is None
    assert gate.request_abort(["other", "running"]) == "running"
    with pytest.raises(KeyboardInterrupt):
        gate.handle_sigint(signal.SIGINT, None)
    assert gate.aborted
    gate.leave_task()
    assert gate.request_abort(["running"]) is None  # finished: nothing runs any more


def test_abort_signal_landing_after_its_request_ended_is_dropped(gate: InterruptGate) -> None:
    gate.arm("first")
    gate.enter_task()
    assert gate.request_abort(["first"]) == "first"
    gate.leave_task()  # "first" ends before the abort's SIGINT is handled
    gate.arm("second")
    gate.enter_task()
    gate.handle_sigint(signal.SIGINT, None)  # the abort's SIGINT: not for "second"
    assert not gate.aborted
    with pytest.raises(KeyboardInterrupt):  # a plain SIGINT still interrupts
        gate.handle_sigint(signal.SIGINT, None)
    gate.leave_task()
