"""The engine link core (corral/engine/link.py) driven by messages and ``now``: no sockets, no
processes, no clock. The real-process tests in test_engine.py cover the shell around it."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from corral.engine.link import (
    ADDRESS_FIELDS,
    Action,
    EngineLink,
    Exit,
    Fail,
    LinkSettings,
    Phase,
    Registered,
    Resend,
    SendRegistration,
)
from corral.errors import InvalidContent
from corral.protocol.session import Frame, Message, Session
from corral.protocol.shm import Settings

UUID = "engine-uuid"
ADDRESSES = {name: f"tcp://127.0.0.1:{5000 + index}" for index, name in enumerate(ADDRESS_FIELDS)}
PERIOD = 1.0
MISSED = 3
HUB = Session(b"link-test-key", check_msg_type=False)


def make_link(**settings: Any) -> EngineLink:
    counter = itertools.count()
    return EngineLink(
        UUID,
        lambda: f"request-{next(counter)}",
        LinkSettings(**{"registration_timeout": 10.0, "missed_beats": MISSED, **settings}),
        placement={"host": "here"},
        shm_host="shm-host",
        registration_address="tcp://127.0.0.1:4999",
    )


def hub_msg(msg_type: str, content: dict[str, Any], parent_id: str | None = None) -> Message:
    parent = {} if parent_id is None else {"msg_id": parent_id}
    return Message(HUB.header(msg_type), parent, {}, content)


def reply(request: SendRegistration, **content: Any) -> Message:
    return hub_msg("registration_reply", content, request.msg_id)


def accepted(request: SendRegistration, engine_id: int = 0, **extra: Any) -> Message:
    content = {"status": "ok", "id": engine_id, "heartbeat_period": PERIOD, **ADDRESSES, **extra}
    return reply(request, **content)


def refused(request: SendRegistration, evalue: str, **extra: Any) -> Message:
    return reply(request, status="error", ename="RegistrationError", evalue=evalue, **extra)


def only(actions: list[Action], kind: type[Any]) -> Any:
    assert len(actions) == 1 and isinstance(actions[0], kind), actions
    return actions[0]


def phase(link: EngineLink) -> Phase:
    """The link's phase, read through a call (mypy would keep an earlier narrowing)."""
    return link.phase


def registered_link(now: float = 0.0) -> EngineLink:
    link = make_link()
    request = only(link.start(now), SendRegistration)
    only(link.on_registration_message(accepted(request), now), Registered)
    return link


def reply_frames(parent_id: str) -> list[Frame]:
    msg = HUB.msg("apply_reply", {"status": "ok"}, parent={"msg_id": parent_id})
    return HUB.serialize(msg, [b"client"])


def test_the_registration_names_the_engines_machine_and_cpus() -> None:
    counter = itertools.count()
    cpus = {"machine": "boot:abc", "ids": [0, 1]}
    link = EngineLink(UUID, lambda: f"request-{next(counter)}", cpus=cpus)
    request = only(link.start(0.0), SendRegistration)
    assert request.content == {"uuid": UUID, "cpus": cpus}


def test_first_registration() -> None:
    link = make_link(requested_id=7)
    request = only(link.start(100.0), SendRegistration)
    assert request.content == {
        "uuid": UUID,
        "info": {"host": "here"},
        "id": 7,
        "shm_host": "shm-host",
    }
    assert link.next_deadline() == 110.0  # the registration timeout
    shm = {"prefix": "corral-0123456789abcdef", "host": "shm-host", "threshold": 1000}
    done = only(link.on_registration_message(accepted(request, 7, shm=shm), 100.5), Registered)
    assert done == Registered(
        7, ADDRESSES, PERIOD, Settings("corral-0123456789abcdef", "shm-host", 1000), True
    )
    assert (link.phase, link.engine_id) == (Phase.CONNECTED, 7)
    assert link.next_deadline() == 100.5 + PERIOD * MISSED
    # a reply to no request of ours, or another message type, changes nothing
    assert link.on_registration_message(accepted(request), 101.0) == []
    assert link.on_registration_message(hub_msg("frobnicate", {}, request.msg_id), 101.0) == []
    with pytest.raises(RuntimeError, match="already started"):
        link.start(102.0)


def test_refused_registration_fails_with_the_reason() -> None:
    link = make_link()
    request = only(link.start(0.0), SendRegistration)
    failed = only(link.on_registration_message(refused(request, "uuid in use"), 0.1), Fail)
    assert "refused registration: RegistrationError: uuid in use" in failed.reason
    assert link.phase is Phase.DONE
    assert link.next_deadline() is None
    assert link.tick(100.0) == []


@pytest.mark.parametrize(
    "content",
    [
        {"status": "ok", "id": 0, "heartbeat_period": PERIOD},  # no addresses
        {"status": "ok", "id": "zero", "heartbeat_period": PERIOD, **ADDRESSES},
        {"status": "ok", "id": 0, "heartbeat_period": -1, **ADDRESSES},
    ],
)
def test_an_unusable_reply_fails_the_registration(content: dict[str, Any]) -> None:
    link = make_link()
    request = only(link.start(0.0), SendRegistration)
    failed = only(link.on_registration_message(reply(request, **content), 0.1), Fail)
    assert "unusable registration reply" in failed.reason


def test_an_id_in_use_is_asked_for_again_every_quarter_second() -> None:
    link = make_link(requested_id=3, registration_timeout=1.0)
    first = only(link.start(0.0), SendRegistration)
    in_use = refused(first, "engine id 3 is in use", id_in_use=3)
    assert link.on_registration_message(in_use, 0.1) == []
    assert link.next_deadline() == pytest.approx(0.35)
    assert link.tick(0.3) == []  # not yet
    second = only(link.tick(0.35), SendRegistration)
    assert second.content["id"] == 3 and second.msg_id != first.msg_id
    assert link.next_deadline() == 1.0  # no retry pending: the timeout
    # too little time left for another retry: the refusal stands
    failed = only(link.on_registration_message(refused(second, "in use", id_in_use=3), 0.8), Fail)
    assert "in use" in failed.reason


def test_the_id_retry_ends_in_registration() -> None:
    link = make_link(requested_id=3)
    first = only(link.start(0.0), SendRegistration)
    assert link.on_registration_message(refused(first, "in use", id_in_use=3), 0.0) == []
    second = only(link.tick(0.25), SendRegistration)
    assert only(link.on_registration_message(accepted(second, 3), 0.3), Registered).first


def test_a_preferred_id_in_use_gives_way_to_any_id_at_once() -> None:
    """An MPI rank (preferred_id) is only a wish: in use, the engine registers without it."""
    link = make_link(preferred_id=2)
    first = only(link.start(0.0), SendRegistration)
    assert first.content["id"] == 2
    again = only(link.on_registration_message(refused(first, "in use", id_in_use=2), 0.1),
                 SendRegistration)  # fmt: skip
    assert "id" not in again.content
    assert only(link.on_registration_message(accepted(again, 7), 0.2), Registered).first
    assert link.engine_id == 7
    # a requested id (a restarted engine) wins over the preference, and is insisted on
    insisting = make_link(requested_id=3, preferred_id=2)
    request = only(insisting.start(0.0), SendRegistration)
    assert request.content["id"] == 3
    assert insisting.on_registration_message(refused(request, "in use", id_in_use=3), 0.1) == []


def test_an_unanswered_registration_times_out() -> None:
    link = make_link(registration_timeout=0.5)
    only(link.start(10.0), SendRegistration)
    assert link.tick(10.4) == []
    failed = only(link.tick(10.5), Fail)
    assert "no registration reply from tcp://127.0.0.1:4999 within 0.5 s" in failed.reason


def test_messages_other_than_the_reply_wait_for_registration() -> None:
    link = make_link()
    request = only(link.start(0.0), SendRegistration)
    notice = hub_msg("unregistration_notification", {"uuid": UUID})
    assert link.on_registration_message(notice, 0.1) == []
    assert link.on_ping(b"1.hub", 0.1) == []
    assert only(link.on_registration_message(accepted(request), 0.2), Registered)


def test_controller_loss_after_missed_periods_and_re_registration() -> None:
    link = registered_link()
    link.received("task-1")
    assert link.on_ping(b"1.hub-a", 1.0) == []
    assert link.next_deadline() == 1.0 + PERIOD * MISSED
    assert link.tick(3.9) == []
    again = only(link.tick(4.1), SendRegistration)  # silent for more than 3 periods
    assert link.phase is Phase.LOST
    assert again.content == {
        "uuid": UUID,
        "info": {"host": "here"},
        "id": 0,
        "tasks": ["task-1"],
        "shm_host": "shm-host",
    }
    # asked again every missed_beats periods while nothing answers
    assert link.tick(5.0) == []
    later = only(link.tick(4.1 + PERIOD * MISSED), SendRegistration)
    # the Hub takes either; here the later one, giving a new id
    actions = link.on_registration_message(accepted(later, engine_id=4), 8.0)
    assert actions == [Registered(4, ADDRESSES, PERIOD, None, False), Resend([])]
    assert (link.phase, link.engine_id) == (Phase.CONNECTED, 4)
    assert link.on_registration_message(refused(again, "already registered"), 8.1) == []


def test_a_restarted_controller_is_noticed_by_its_pings() -> None:
    link = registered_link()
    assert link.on_ping(b"1.hub-a", 0.5) == []
    assert link.on_ping(b"2.hub-a.1", 0.6) == []  # a probe of the same instance
    attempt = only(link.on_ping(b"1.hub-b", 0.7), SendRegistration)
    assert attempt.content["tasks"] == [] and link.phase is Phase.LOST
    assert link.on_ping(b"2.hub-b", 0.8) == []  # already re-registering
    assert isinstance(link.on_registration_message(accepted(attempt), 0.9)[0], Registered)
    assert link.on_ping(b"3.hub-b", 1.0) == []


def test_replies_are_resent_after_re_registration_then_released() -> None:
    """Attempts queued during the outage all reach the restarted Hub: it accepts the first and
    refuses the others; the engine still sends the replies the Hub never confirmed."""
    link = registered_link()
    confirmed, kept = reply_frames("task-1"), reply_frames("task-2")
    link.received("task-1")
    link.received("task-2")
    link.received("task-3")  # still running: reported, nothing to resend
    assert link.replied(b"mux", confirmed, 1.0) == "task-1"
    assert link.replied(b"task", kept, 1.1) == "task-2"
    link.on_registration_message(hub_msg("replies_recorded", {"mux": "task-1"}), 1.2)
    first = only(link.tick(10.0), SendRegistration)
    second = only(link.tick(10.0 + PERIOD * MISSED), SendRegistration)
    assert first.content["tasks"] == second.content["tasks"] == ["task-3", "task-2"]
    registered, resend = link.on_registration_message(accepted(first), 20.0)
    assert isinstance(registered, Registered)
    assert resend == Resend([(b"task", kept)])
    assert link.on_registration_message(refused(second, "already registered"), 20.1) == []
    assert link.phase is Phase.CONNECTED
    # sent again, then forgotten: a later re-registration has nothing more to send
    link.received("task-4")
    later = only(link.tick(40.0), SendRegistration)
    assert later.content["tasks"] == ["task-3", "task-4"]
    assert link.on_registration_message(accepted(later), 40.1)[1] == Resend([])


def test_a_registration_again_names_the_load_balanced_tasks_with_their_retries() -> None:
    """A restarted controller may never have recorded their requests: it learns which came
    load-balanced, and how many retries they have, so that their client may send them again
    if this engine dies before they are answered to it (hub_restart.expect_answers): those
    it holds, and those whose replies went to the controller that died (unconfirmed; on
    aa0189a these were left out, and chaos_mixed seed 50 failed a map with retries=2)."""
    link = registered_link()
    link.received("direct-1")
    link.received("balanced-1", 2)
    link.received("balanced-2", 0)
    link.received("answered", 1)
    link.received("confirmed", 3)
    assert link.replied(b"task", reply_frames("confirmed"), 0.9) == "confirmed"
    assert link.replied(b"task", reply_frames("answered"), 1.0) == "answered"
    link.on_registration_message(hub_msg("replies_recorded", {"task": "confirmed"}), 1.1)
    again = only(link.tick(10.0), SendRegistration)
    assert again.content["tasks"] == ["direct-1", "balanced-1", "balanced-2", "answered"]
    assert again.content["balanced"] == {"balanced-1": 2, "balanced-2": 0, "answered": 1}
    # once the replies are sent again to the new controller, they are its to record
    registered, resend = link.on_registration_message(accepted(again), 20.0)
    assert isinstance(registered, Registered) and len(resend.replies) == 1
    assert link.replies.balanced_tasks() == {"balanced-1": 2, "balanced-2": 0}
    plain = registered_link()
    plain.received("direct-1")
    assert "balanced" not in only(plain.tick(10.0), SendRegistration).content


def test_a_refusal_counts_only_when_no_attempt_is_left() -> None:
    link = registered_link()
    first = only(link.tick(10.0), SendRegistration)
    second = only(link.tick(10.0 + PERIOD * MISSED), SendRegistration)
    assert link.on_registration_message(refused(first, "already registered"), 14.0) == []
    assert phase(link) is Phase.LOST  # the other attempt may still be accepted
    assert link.on_registration_message(refused(second, "already registered"), 14.1) == []
    assert phase(link) is Phase.CONNECTED  # nothing left: pings decide again
    assert only(link.tick(14.2), SendRegistration)  # and none came for long: lost again


def test_an_id_taken_by_another_engine_is_given_up_for_a_new_one() -> None:
    """A restarted controller gave this engine's id to an engine that asked first. Left
    CONNECTED, the engine would never ask again (the same controller pings it) and no client
    would ever see it: it asks at once for a new id, and keeps asking without one."""
    link = registered_link()
    link.received("task-1")
    assert link.on_ping(b"1.hub-a", 9.0) == []
    first = only(link.on_ping(b"1.hub-b", 10.0), SendRegistration)
    assert first.content["id"] == 0
    again = only(
        link.on_registration_message(refused(first, "engine id 0 is in use", id_in_use=0), 10.1),
        SendRegistration,
    )
    assert "id" not in again.content and again.content["tasks"] == ["task-1"]
    assert phase(link) is Phase.LOST
    later = only(link.tick(10.1 + PERIOD * MISSED), SendRegistration)
    assert "id" not in later.content  # unanswered: still without the taken id
    registered, resend = link.on_registration_message(accepted(again, engine_id=5), 10.5)
    assert registered == Registered(5, ADDRESSES, PERIOD, None, False) and resend == Resend([])
    assert (link.phase, link.engine_id) == (Phase.CONNECTED, 5)
    # a later loss asks for the new id
    assert only(link.tick(30.0), SendRegistration).content["id"] == 5


def test_a_controller_back_on_other_addresses_stops_the_engine() -> None:
    link = registered_link()
    attempt = only(link.tick(10.0), SendRegistration)
    moved = accepted(attempt, mux="tcp://127.0.0.1:6000")
    assert link.on_registration_message(moved, 10.5) == [
        Exit(1, "the controller came back on other addresses")
    ]
    assert link.phase is Phase.DONE
    assert link.tick(100.0) == []


def test_unregistration_notification_stops_this_engine_only() -> None:
    link = registered_link()
    other = hub_msg("unregistration_notification", {"uuid": "another-engine"})
    assert link.on_registration_message(other, 1.0) == []
    ours = hub_msg("unregistration_notification", {"uuid": UUID})
    assert link.on_registration_message(ours, 1.0) == [
        Exit(1, "the controller unregistered this engine")
    ]


def test_malformed_replies_recorded_is_an_error_for_the_shell_to_count() -> None:
    link = registered_link()
    link.replied(b"mux", reply_frames("task-1"), 1.0)
    with pytest.raises(InvalidContent, match="replies_recorded"):
        link.on_registration_message(hub_msg("replies_recorded", {"mux": 5}), 1.1)
    assert list(link.replies.recent) == ["task-1"]
