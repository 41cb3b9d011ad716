"""What the client does with requests in flight across a controller outage (sans-I/O)."""

from __future__ import annotations

from corral.client.recovery import RESEND_LIMIT, UNKNOWN_CHECKS, Recovery, Resender
from corral.protocol.session import Session


def test_completed_at_the_hub_are_fetched_and_pending_ones_asked_again() -> None:
    recovery = Recovery.of(["done", "running"])
    assert sorted(recovery.to_ask(["done", "running"])) == ["done", "running"]
    plan = recovery.answered({"done": "ok", "running": "pending"})
    assert plan.fetch == ["done"] and plan.lost == [] and plan.ask_again
    plan = recovery.answered({"running": "error"})
    assert plan.fetch == ["running"] and not plan.ask_again


def test_answered_here_meanwhile_is_forgotten() -> None:
    recovery = Recovery.of(["a", "b"])
    assert recovery.to_ask(["b"]) == ["b"]


def test_unknown_to_the_hub_several_times_in_a_row_is_lost() -> None:
    recovery = Recovery.of(["gone", "late"])
    for _ in range(UNKNOWN_CHECKS - 1):
        plan = recovery.answered({})
        assert plan.lost == [] and plan.ask_again
    plan = recovery.answered({"late": "pending"})  # recorded at last: the count starts over
    assert plan.lost == ["gone"] and plan.ask_again
    for _ in range(UNKNOWN_CHECKS - 1):
        assert recovery.answered({}).lost == []


def test_a_held_request_is_given_back_a_bounded_number_of_times_until_released() -> None:
    msg = Session(b"k").msg("apply_request", {})
    resender = Resender()
    assert resender.take("unknown") is None
    resender.hold(msg.msg_id, msg)
    for _ in range(RESEND_LIMIT):
        assert resender.take(msg.msg_id) is msg
    assert resender.take(msg.msg_id) is None  # sent again often enough: it fails instead
    resender.hold("answered", msg)
    resender.release("answered")
    assert resender.take("answered") is None and "answered" not in resender.held
