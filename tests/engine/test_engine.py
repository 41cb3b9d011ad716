"""Conformance of a real engine process to docs/wire-flows.md, against a fake controller.

Each test starts ``python -m corral.engine`` and plays the controller's sockets (conftest.py).
Waits poll sockets with deadlines; every engine process is killed when its test ends.
"""

from __future__ import annotations

import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from corral.engine.placement import cpu_share
from corral.protocol.references import Reference, interactive
from corral.protocol.serialize import deserialize_object, pack_apply_message
from corral.protocol.session import Message, Session
from corral.sharedmem import host_identity
from tests.engine.controller_double import KEY, WAIT, FakeController, is_idle
from tests.polling import requests_queued, until
from tests.wire import readable, send_msg

CAPTURED = "from the client"
LONG_TASK = "import time\ntime.sleep(30)"
SLEEPING = "sleeping"
# says when its user code runs: "busy" is published before, and an interrupt landing between
# the two is a KeyboardInterrupt raised as user code starts (no user line in its traceback)
LONG_TASK_SAYING_SO = f"import time\nprint({SLEEPING!r}, flush=True)\ntime.sleep(30)"


def apply_msg(session: Session, f: Any, *args: Any, **kwargs: Any) -> Message:
    return session.msg("apply_request", {}, buffers=pack_apply_message(f, args, kwargs))


def apply(controller: FakeController, f: Any, *args: Any, channel: str = "mux", **kw: Any) -> Any:
    """Run ``f`` on the engine; its result, or AssertionError with the error reply."""
    request = controller.send(channel, apply_msg(controller.session, f, *args, **kw))
    reply = controller.reply_to(channel, request)
    assert reply.content == {"status": "ok"}, reply.content
    return deserialize_object(list(reply.buffers))


def execute(controller: FakeController, code: str) -> Message:
    return controller.call("mux", "execute_request", {"code": code})


def wait_started(controller: FakeController, request: Message) -> None:
    """Until the engine publishes ``busy`` for ``request``: the main thread is running it."""
    controller.iopub_until(
        lambda msg: (
            msg.msg_type == "status"
            and msg.parent_header.get("msg_id") == request.msg_id
            and msg.content == {"execution_state": "busy"}
        )
    )


def wait_sleeping(controller: FakeController, request: Message) -> None:
    """Until ``request`` (a LONG_TASK_SAYING_SO) prints that its user code runs."""
    controller.iopub_until(
        lambda msg: (
            msg.msg_type == "stream"
            and msg.parent_header.get("msg_id") == request.msg_id
            and SLEEPING in str((msg.content or {}).get("text"))
        )
    )


def interrupt(controller: FakeController) -> None:
    reply = controller.call("control", "signal_request", {"sig": int(signal.SIGINT)})
    assert reply.content == {"status": "ok"}


# ---------------------------------------------------------------------- registration, heart


def test_registration_and_heartbeat_during_a_busy_loop(controller: FakeController) -> None:
    engine = controller.start_engine()
    request = controller.register(engine_id=0)
    # shm_host: corral.sharedmem; direct: its own ROUTER, for clients on its host; cpus: its
    # machine and CPUs, for the scheduler's packing of bursts (corral.controller.packing)
    assert set(request.content or {}) == {"uuid", "shm_host", "info", "cpus", "direct"}
    assert (request.content or {})["direct"].startswith("tcp://127.0.0.1:")
    # and its process, for the scheduler to read its CPU time (corral.controller.cpu_wait)
    assert (request.content or {})["cpus"] == {**cpu_share(), "pid": engine.popen.pid}
    info = (request.content or {})["info"]  # where the engine runs (corral.engine.placement)
    assert (info["pid"], info["launcher"], info["mpi_rank"]) == (engine.popen.pid, "local", None)
    controller.wait_pong()
    controller.warm_iopub()
    code = "import time\nend = time.monotonic() + 1\nwhile time.monotonic() < end:\n    pass"
    busy = controller.send("mux", "execute_request", {"code": code})
    wait_started(controller, busy)
    round_trips = []
    while not controller.mux.poll(0):
        beat = controller.ping()
        sent = time.monotonic()
        assert controller.hb_pong.poll(1000), "no pong while the task holds the GIL"
        assert controller.hb_pong.recv_multipart() == [controller.uuid.encode(), beat]
        round_trips.append(time.monotonic() - sent)
        controller.mux.poll(50)
    assert controller.reply_to("mux", busy).content == {"status": "ok", "execution_count": 1}
    assert len(round_trips) >= 3  # each answered within the poll's bound above
    assert engine.popen.poll() is None


def test_an_id_still_in_use_is_asked_for_again(controller: FakeController) -> None:
    """A restarted engine asking for its old id before the Hub saw the old one die."""
    engine = controller.start_engine("--uuid", "restarted-uuid", "--id", "3")
    for answer in ({"id_in_use": 3}, {}):  # refused as in use, then for good
        request = controller.recv_type(controller.registration, "registration_request")
        assert request.content is not None and request.content["id"] == 3
        _reply_registration(controller, request, {**_refusal("engine id 3 is in use"), **answer})
    assert engine.wait_exit() == 1
    assert "is in use" in engine.log()


def test_refused_registration_exits_with_the_reason(controller: FakeController) -> None:
    engine = controller.start_engine("--uuid", "my-engine-uuid", "--id", "3")
    request = controller.recv_type(controller.registration, "registration_request")
    assert request.content is not None and request.content.pop("info")["pid"] == engine.popen.pid
    assert request.content.pop("direct").startswith("tcp://127.0.0.1:")  # its own ROUTER
    assert request.content == {
        "uuid": "my-engine-uuid",
        "id": 3,
        "shm_host": host_identity(),
        "cpus": {**cpu_share(), "pid": engine.popen.pid},
    }
    assert request.idents == (b"my-engine-uuid",)
    _reply_registration(controller, request, _refusal("uuid already in use"))
    assert engine.wait_exit() == 1
    assert "uuid already in use" in engine.log()


def test_unanswered_registration_times_out(controller: FakeController) -> None:
    engine = controller.start_engine("--timeout", "0.3")
    assert engine.wait_exit() == 1
    assert "no registration reply" in engine.log()


def test_reregisters_when_pings_stop(controller: FakeController) -> None:
    engine = controller.start_engine()
    controller.register(engine_id=0, period=0.05)
    again = controller.recv_type(controller.registration, "registration_request")
    assert again.content is not None and "host" in again.content.pop("info")
    assert again.content.pop("direct").startswith("tcp://127.0.0.1:")  # the same ROUTER
    # it names the tasks it holds and the replies it would send again: none yet
    assert again.content == {
        "uuid": controller.uuid,
        "id": 0,
        "tasks": [],
        "shm_host": host_identity(),
        "cpus": {**cpu_share(), "pid": engine.popen.pid},
    }
    content = {"status": "ok", "id": 4, "heartbeat_period": 0.05, **controller.addresses()}
    send_msg(
        controller.session,
        controller.registration,
        "registration_reply",
        content,
        parent=again,
        idents=again.idents,
    )
    until(  # the new id shows in replies once the engine has taken the reply
        lambda: execute(controller, "None").metadata["engine_id"] == 4, WAIT, "the new id"
    )


def _answer_registration(controller: FakeController, request: Message, ok: bool) -> None:
    if ok:
        content = {"status": "ok", "id": 0, "heartbeat_period": 0.05, **controller.addresses()}
    else:
        content = _refusal("registered")
    _reply_registration(controller, request, content)


def _refusal(evalue: str) -> dict[str, str]:
    return {"status": "error", "ename": "RegistrationError", "evalue": evalue}


def _reply_registration(
    controller: FakeController, request: Message, content: dict[str, object]
) -> None:
    send_msg(
        controller.session,
        controller.registration,
        "registration_reply",
        content,
        parent=request,
        idents=request.idents,
    )


def test_unconfirmed_replies_are_sent_again_though_a_later_attempt_is_refused(
    controller: FakeController,
) -> None:
    """A restarted controller gets every attempt the engine queued while it was gone: the
    first is accepted, the others refused as already registered. The engine still sends the
    replies the Hub never confirmed; a confirmed one is forgotten."""
    controller.start_engine()
    controller.register(engine_id=0, period=0.05)
    confirmed = execute(controller, "1")
    kept = execute(controller, "2")
    send_msg(
        controller.session,
        controller.registration,
        "replies_recorded",
        {"mux": confirmed.parent_header["msg_id"]},
        idents=(controller.uuid.encode(),),
    )
    attempts = [controller.recv_type(controller.registration, "registration_request")]
    deadline = time.monotonic() + WAIT
    # no pings: it re-registers all along; wait for an attempt sent after the confirmation
    while (attempts[-1].content or {}).get("tasks") != [kept.parent_header["msg_id"]]:
        assert time.monotonic() < deadline, [a.content for a in attempts]
        attempts.append(controller.recv_type(controller.registration, "registration_request"))
    attempts.append(controller.recv_type(controller.registration, "registration_request"))
    _answer_registration(controller, attempts[0], ok=True)
    for attempt in attempts[1:]:
        _answer_registration(controller, attempt, ok=False)
    # the same message again: a fresh session, as a restarted scheduler has (no replay seen)
    again = controller.recv(controller.mux, WAIT, Session(KEY, check_msg_type=False))
    assert again.parent_header["msg_id"] == kept.parent_header["msg_id"]
    assert again.content == kept.content


def test_a_confirmation_of_mux_replies_keeps_the_direct_replies_sent_before(
    controller: FakeController,
) -> None:
    """Issue 13, round twelve: one engine answers a direct request (on its own ROUTER) and
    then a MUX request; the Hub confirms the MUX reply. The direct reply's copy travels
    another path, which the Hub may not have read yet: the engine must keep that reply for a
    restarted controller, and send it again (through the MUX). On 08c2997 it was kept under
    the MUX's name, and forgotten with the MUX reply after it."""
    controller.start_engine()
    registration = controller.register(engine_id=0, period=0.05)
    uuid = controller.uuid.encode()
    address = str((registration.content or {})["direct"]).split("?", 1)[0]
    client = controller.context.socket(zmq.ROUTER)
    client.linger = 0
    client.setsockopt(zmq.IDENTITY, b"client-2")
    client.setsockopt(zmq.CONNECT_ROUTING_ID, uuid)
    client.connect(address)
    client_session = Session(KEY)
    direct = client_session.msg("execute_request", {"code": "1"})
    client.send_multipart([uuid, *client_session.serialize(direct)])
    assert readable(client, int(WAIT * 1000)), "no reply on the direct socket"
    assert client_session.feed(client.recv_multipart()[1:]).parent_id == direct.msg_id
    by_mux = execute(controller, "2")
    confirmed = by_mux.parent_header["msg_id"]
    confirmed_at = time.time()
    send_msg(
        controller.session,
        controller.registration,
        "replies_recorded",
        {"mux": confirmed},
        idents=(uuid,),
    )
    # no pings: it registers again and again, from the first missed ping on, so attempts made
    # before the confirmation may still wait in the socket (on a loaded machine some made
    # before either reply existed, naming no task): skip them by their date, then wait for an
    # attempt made once the engine had read the confirmation
    attempts = [controller.recv_type(controller.registration, "registration_request")]
    deadline = time.monotonic() + WAIT
    while _made_at(attempts[-1]) < confirmed_at or confirmed in (attempts[-1].content or {}).get(
        "tasks", [confirmed]
    ):
        assert time.monotonic() < deadline, [a.content for a in attempts]
        attempts.append(controller.recv_type(controller.registration, "registration_request"))
    assert (attempts[-1].content or {})["tasks"] == [direct.msg_id]
    attempts.append(controller.recv_type(controller.registration, "registration_request"))
    _answer_registration(controller, attempts[0], ok=True)
    for attempt in attempts[1:]:
        _answer_registration(controller, attempt, ok=False)
    again = controller.recv(controller.mux, WAIT, Session(KEY, check_msg_type=False))
    assert again.idents == (uuid, b"client-2")  # through the MUX, to the direct client
    assert again.parent_header["msg_id"] == direct.msg_id
    client.close()


def _made_at(msg: Message) -> float:
    """When ``msg`` was made: its header's date, in seconds since the epoch."""
    return datetime.fromisoformat(str(msg.header["date"])).timestamp()


def test_unregistration_notification_makes_the_engine_exit(controller: FakeController) -> None:
    engine = controller.started()
    content = {"id": 0, "uuid": controller.uuid}
    send_msg(
        controller.session,
        controller.registration,
        "unregistration_notification",
        content,
        idents=[controller.uuid.encode()],
    )
    assert engine.wait_exit() == 1
    assert "unregistered this engine" in engine.log()


# ---------------------------------------------------------------------- apply and execute


def test_apply_with_numpy_arguments_on_mux_and_task(controller: FakeController) -> None:
    controller.started()
    array = np.arange(250_000, dtype=np.float64).reshape(500, 500)
    result = apply(controller, lambda a, scale=1: a.T * scale, array, scale=3)
    np.testing.assert_array_equal(result, array.T * 3)
    assert apply(controller, lambda a: float(a.sum()), array, channel="task") == array.sum()


def test_execute_captures_stdout_in_metadata_and_on_iopub(controller: FakeController) -> None:
    controller.started()
    request = controller.send(
        "mux",
        "execute_request",
        {"code": "import sys\nprint('hello')\nprint('e', file=sys.stderr)\n6 * 7"},
    )
    reply = controller.reply_to("mux", request)
    assert reply.msg_type == "execute_reply"
    assert reply.content == {"status": "ok", "execution_count": 1}
    metadata = reply.metadata
    assert metadata["stdout"] == "hello\n"
    assert metadata["stderr"] == "e\n"
    assert metadata["execute_result"] == {"text/plain": "42"}
    assert (metadata["engine_id"], metadata["engine_uuid"], metadata["status"]) == (
        0,
        controller.uuid,
        "ok",
    )
    assert metadata["started"] <= metadata["completed"]
    published = controller.iopub_until(lambda msg: is_idle(msg, request))
    assert all(msg.parent_header == request.header for _, msg in published)
    assert [topic for topic, _ in published] == [
        b"engine.0.status",
        b"engine.0.execute_input",
        b"engine.0.stream",
        b"engine.0.stream",
        b"engine.0.execute_result",
        b"engine.0.status",
    ]
    streams = [msg.content for _, msg in published if msg.msg_type == "stream"]
    assert streams == [{"name": "stdout", "text": "hello\n"}, {"name": "stderr", "text": "e\n"}]


def test_errors_carry_ename_evalue_traceback(controller: FakeController) -> None:
    controller.started()
    request = controller.send("mux", "execute_request", {"code": "x = 1\nx / 0"})
    reply = controller.reply_to("mux", request)
    content = reply.content or {}
    assert (content["status"], content["ename"]) == ("error", "ZeroDivisionError")
    assert content["evalue"] == "division by zero"
    assert any("x / 0" in line for line in content["traceback"])
    assert not any("corral/engine" in line for line in content["traceback"])
    assert content["engine_info"] == {"engine_id": 0, "engine_uuid": controller.uuid}
    assert reply.metadata["status"] == "error"
    published = controller.iopub_until(lambda msg: is_idle(msg, request))
    errors = [msg.content for _, msg in published if msg.msg_type == "error"]
    assert errors and errors[0]["ename"] == "ZeroDivisionError"  # type: ignore[index]

    def exits() -> None:
        raise SystemExit(0)

    failing = controller.send("mux", apply_msg(controller.session, exits))
    assert (controller.reply_to("mux", failing).content or {})["ename"] == "SystemExit"
    assert apply(controller, lambda: "still running") == "still running"


def test_references_interactive_functions_and_clear(controller: FakeController) -> None:
    controller.started()
    execute(controller, "base = 21")
    assert apply(controller, lambda value: value * 2, Reference("base")) == 42

    @interactive
    def double_base() -> str:
        global doubled
        doubled = base * 2  # type: ignore[name-defined]  # noqa: F821
        return CAPTURED

    assert apply(controller, double_base) == CAPTURED
    reply = execute(controller, "(doubled, CAPTURED)")
    assert reply.metadata["execute_result"] == {"text/plain": "(42, 'from the client')"}

    cleared = controller.call("control", "clear_request", {})
    assert cleared.content == {"status": "ok"}
    assert {"engine_uuid", "engine_id", "status", "started", "completed"} <= set(cleared.metadata)
    assert (execute(controller, "base").content or {})["ename"] == "NameError"


# ---------------------------------------------------------------------- control


def test_control_is_served_while_a_task_runs_and_sigint_interrupts_it(
    controller: FakeController,
) -> None:
    controller.started()
    long = controller.send("mux", "execute_request", {"code": LONG_TASK_SAYING_SO})
    wait_sleeping(controller, long)
    started = time.monotonic()
    clear = controller.send("control", "clear_request", {})  # waits for the task to end
    interrupt(controller)  # served at once all the same
    reply = controller.reply_to("mux", long)
    assert (reply.content or {})["ename"] == "KeyboardInterrupt"
    assert any("time.sleep(30)" in line for line in (reply.content or {})["traceback"])
    assert time.monotonic() - started < 20  # not the 30 s the task would sleep
    assert controller.reply_to("control", clear).content == {"status": "ok"}
    assert execute(controller, "'alive'").metadata["execute_result"] == {"text/plain": "'alive'"}


def test_clear_never_empties_the_namespace_under_a_running_task(
    controller: FakeController, tmp_path: Path
) -> None:
    """clear_request runs on the main thread once the running task ends: the task still sees
    its names, and the clear is answered after the task."""
    controller.started()
    execute(controller, "kept = 'defined before the clear'")
    go = tmp_path / "go"
    code = f"import os, time\nwhile not os.path.exists({str(go)!r}):\n    time.sleep(0.01)\nkept"
    running = controller.send("mux", "execute_request", {"code": code})
    wait_started(controller, running)
    clear = controller.send("control", "clear_request", {})
    # the I/O thread serves control messages in order: once this one is answered, it has
    # taken the clear_request, and that was not answered before the task ended
    barrier = controller.call("control", "abort_request", {"msg_ids": ["no-such-task"]})
    assert barrier.content == {"status": "ok"}
    go.touch()
    reply = controller.reply_to("mux", running)
    assert reply.metadata["execute_result"] == {"text/plain": "'defined before the clear'"}
    cleared = controller.reply_to("control", clear)
    assert cleared.content == {"status": "ok"}
    assert {"engine_uuid", "engine_id", "status", "started", "completed"} <= set(cleared.metadata)
    assert (execute(controller, "kept").content or {})["ename"] == "NameError"


def test_abort_by_msg_id_including_tasks_not_yet_arrived(controller: FakeController) -> None:
    controller.started()
    # interrupted below: stop_on_error false, so that its failure aborts nothing (only the ids)
    long = controller.send("mux", "execute_request", {"code": LONG_TASK, "stop_on_error": False})
    wait_started(controller, long)
    queued = controller.send("mux", "execute_request", {"code": "ran_queued = True"})
    kept = controller.send("mux", "execute_request", {"code": "'kept'"})
    future = controller.session.msg("execute_request", {"code": "ran_future = True"})
    abort = controller.call("control", "abort_request", {"msg_ids": [queued.msg_id, future.msg_id]})
    assert abort.content == {"status": "ok"}
    controller.send("mux", future)
    interrupt(controller)
    assert (controller.reply_to("mux", long).content or {})["ename"] == "KeyboardInterrupt"
    for aborted in (queued, kept, future):
        reply = controller.reply_to("mux", aborted)
        if aborted is kept:
            assert reply.metadata["execute_result"] == {"text/plain": "'kept'"}
            continue
        assert reply.msg_type == "execute_reply"
        assert reply.content is not None
        assert (reply.content["status"], reply.content["ename"]) == ("aborted", "TaskAborted")
        assert reply.metadata["status"] == "aborted"
    check = execute(controller, "[name for name in ('ran_queued', 'ran_future') if name in dir()]")
    assert check.metadata["execute_result"] == {"text/plain": "[]"}


def test_abort_all_answers_every_queued_task_at_once(controller: FakeController) -> None:
    controller.started()
    long = controller.send("mux", "execute_request", {"code": LONG_TASK})
    wait_started(controller, long)
    queued = [
        controller.send("mux", "execute_request", {"code": f"ran_{index} = 1"})
        for index in range(3)
    ]
    waiting = {msg.msg_id for msg in queued}
    deadline = time.monotonic() + WAIT
    while waiting:  # a task may still be in flight when the first abort arrives: repeat
        assert time.monotonic() < deadline, waiting
        reply = controller.call("control", "abort_request", {"msg_ids": None})
        assert reply.content == {"status": "ok"}
        while waiting and readable(controller.mux, 200):
            aborted = controller.recv(controller.mux)
            assert (aborted.content or {})["status"] == "aborted"
            waiting.discard(aborted.parent_header["msg_id"])
    interrupt(controller)  # the running task was not aborted: it is interrupted
    assert (controller.reply_to("mux", long).content or {})["ename"] == "KeyboardInterrupt"
    assert execute(controller, "'next'").metadata["execute_result"] == {"text/plain": "'next'"}


def test_a_failed_execute_aborts_the_executes_queued_behind_it(
    controller: FakeController,
) -> None:
    """stop_on_error on a real engine: with requests queued behind it, the first non-silent
    execute fails, the executes behind it (on mux and task) are aborted, the apply between
    them runs, and a request sent after the failure's reply runs."""
    controller.started()
    gate = controller.send("mux", apply_msg(controller.session, requests_queued, 4))
    failing = controller.send("mux", "execute_request", {"code": "1/0"})
    later = controller.send("mux", "execute_request", {"code": "ran_later = True"})
    pull = controller.send("mux", apply_msg(controller.session, abs, -3))
    last = controller.send("task", "execute_request", {"code": "ran_last = True"})
    assert deserialize_object(list(controller.reply_to("mux", gate).buffers)) == 4
    assert (controller.reply_to("mux", failing).content or {})["ename"] == "ZeroDivisionError"
    aborted = controller.reply_to("mux", later)
    assert (aborted.content or {})["status"] == "aborted"
    assert aborted.metadata["status"] == "aborted"
    assert failing.msg_id in (aborted.content or {})["evalue"]
    assert deserialize_object(list(controller.reply_to("mux", pull).buffers)) == 3
    assert (controller.reply_to("task", last).content or {})["status"] == "aborted"
    check = execute(controller, "[name for name in ('ran_later', 'ran_last') if name in dir()]")
    assert check.metadata["execute_result"] == {"text/plain": "[]"}


def test_shutdown_while_busy_unregisters_and_exits(controller: FakeController) -> None:
    engine = controller.started()
    long = controller.send("mux", "execute_request", {"code": LONG_TASK})
    wait_started(controller, long)
    reply = controller.call("control", "shutdown_request", {})
    assert reply.msg_type == "shutdown_reply"
    assert reply.content == {"status": "ok"}
    request = controller.recv_type(controller.registration, "unregistration_request")
    assert request.content == {"id": 0, "uuid": controller.uuid}
    send_msg(
        controller.session,
        controller.registration,
        "unregistration_reply",
        {"status": "ok"},
        parent=request,
        idents=request.idents,
    )
    assert engine.wait_exit(5) == 0


def test_sigterm_unregisters_and_exits(controller: FakeController) -> None:
    engine = controller.started()
    long = controller.send("mux", "execute_request", {"code": LONG_TASK})
    wait_started(controller, long)
    engine.popen.send_signal(signal.SIGTERM)
    request = controller.recv_type(controller.registration, "unregistration_request")
    assert request.content == {"id": 0, "uuid": controller.uuid}
    send_msg(
        controller.session,
        controller.registration,
        "unregistration_reply",
        {"status": "ok"},
        parent=request,
        idents=request.idents,
    )
    assert engine.wait_exit(5) == 0


# ---------------------------------------------------------------------- bad input


def test_unknown_or_misplaced_types_get_error_replies(controller: FakeController) -> None:
    engine = controller.started()
    session = controller.session
    unknown = Message(session.header("frobnicate_request"), {}, {}, {})
    reply = controller.reply_to("mux", controller.send("mux", unknown))
    assert reply.msg_type == "frobnicate_reply"
    assert reply.content is not None
    assert (reply.content["status"], reply.content["ename"]) == ("error", "UnknownMessageType")
    misplaced = controller.call("control", "execute_request", {"code": "1"})
    assert (misplaced.content or {})["ename"] == "UnknownMessageType"
    on_mux = controller.call("mux", "clear_request", {})
    assert (on_mux.content or {})["ename"] == "UnknownMessageType"
    invalid = Message(session.header("execute_request"), {}, {}, {"no_code": 1})
    reply = controller.reply_to("mux", controller.send("mux", invalid))
    assert (reply.content or {})["ename"] == "InvalidContent"
    bad_signal = controller.call("control", "signal_request", {"sig": 1000})
    assert (bad_signal.content or {})["status"] == "error"
    assert engine.popen.poll() is None


def test_wrong_key_replay_and_garbage_never_execute(
    controller: FakeController, tmp_path: Path
) -> None:
    engine = controller.started()
    marker = tmp_path / "marker"
    touch = apply_msg(Session(b"wrong-key"), lambda: marker.write_text("executed"))
    controller.send("mux", touch, session=Session(b"wrong-key"))
    controller.mux.send_multipart([controller.uuid.encode(), b"client-1", b"garbage"])
    controller.mux.send_multipart(
        [controller.uuid.encode(), b"client-1", b"<IDS|MSG>", b"sig", b"{", b"{}", b"{}", b"{}"]
    )
    counter = tmp_path / "counter"
    append = apply_msg(controller.session, lambda: counter.open("a").write("x"))
    frames = controller.session.serialize(append, [controller.uuid.encode(), b"client-1"])
    controller.mux.send_multipart(frames, copy=False)
    controller.mux.send_multipart(frames, copy=False)  # a replay: same signature
    assert controller.reply_to("mux", append).content == {"status": "ok"}
    assert apply(controller, lambda: "valid") == "valid"  # every earlier message was handled
    assert not marker.exists()
    assert counter.read_text() == "x"
    log = engine.log()
    assert "invalid signature" in log
    assert "replayed message" in log
