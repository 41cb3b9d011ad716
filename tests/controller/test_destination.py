"""The scheduler's compact ``task_dest`` copy: what the Hub accepts and what it refuses."""

from __future__ import annotations

import orjson
import pytest

from corral.controller.destination import (
    MAX_ENTRIES,
    destination_frames,
    destinations_frames,
    read_destinations,
)
from corral.errors import MalformedMessage, ReplayError, SignatureError
from corral.protocol.session import Session

KEY = b"destination-key"


def test_round_trip_names_the_task_and_its_engine() -> None:
    frames = destination_frames(Session(KEY), "task-1", "engine-a", 0)
    assert read_destinations(Session(KEY), frames) == [("task-1", "engine-a")]


def test_each_attempt_is_a_new_copy_and_a_copy_seen_before_is_a_replay() -> None:
    scheduler, hub = Session(KEY), Session(KEY)
    first = destination_frames(scheduler, "task-1", "engine-a", 0)
    again = destination_frames(scheduler, "task-1", "engine-a", 1)
    assert read_destinations(hub, first) == [("task-1", "engine-a")]
    assert read_destinations(hub, again) == [("task-1", "engine-a")]
    with pytest.raises(ReplayError):
        read_destinations(hub, first)


def test_an_altered_copy_or_another_key_is_refused() -> None:
    prefix, signature, _ = destination_frames(Session(KEY), "task-1", "engine-a", 0)
    altered = [prefix, signature, orjson.dumps(["task-1", "engine-b", 0])]
    with pytest.raises(SignatureError):
        read_destinations(Session(KEY), altered)
    with pytest.raises(SignatureError):
        read_destinations(Session(b"other-key"), destination_frames(Session(KEY), "t", "e", 0))
    with pytest.raises(SignatureError):
        read_destinations(Session(KEY), [prefix, b"", altered[2]])


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"{}",
        b"[]",
        b'["task-1", "engine-a", 0]',
        b'[["task-1", "engine-a"]]',
        b'[["", "engine-a", 0]]',
        b'[[1, "e", 0]]',
        b'[["t", "e", 0], ["t2", null, 0]]',
    ],
)
def test_malformed_copies_are_refused_with_a_clear_error(payload: bytes) -> None:
    session = Session(KEY)
    frames = [b"task_dest", session.sign([b"task_dest", payload]), payload]
    with pytest.raises(MalformedMessage):
        read_destinations(Session(KEY), frames)


def test_wrong_frame_count_or_oversized_payload_is_refused() -> None:
    session = Session(KEY)
    with pytest.raises(MalformedMessage):
        read_destinations(session, [b"task_dest", b"signature"])
    huge = orjson.dumps([["t" * 5000, "e", 0]] * MAX_ENTRIES)
    with pytest.raises(MalformedMessage):
        read_destinations(session, [b"task_dest", session.sign([b"task_dest", huge]), huge])


def test_unsigned_sessions_read_it_too() -> None:
    frames = destination_frames(Session(b""), "task-1", "engine-a", 2)
    assert frames[1] == b""
    assert read_destinations(Session(b""), frames) == [("task-1", "engine-a")]


def test_an_unsigned_copy_is_read_only_by_a_hub_that_trusts_its_scheduler() -> None:
    frames = destination_frames(Session(KEY), "task-1", "engine-a", 0, signed=False)
    assert frames[1] == b""
    assert read_destinations(Session(KEY), frames, verify=False) == [("task-1", "engine-a")]
    with pytest.raises(SignatureError):
        read_destinations(Session(KEY), frames)


def test_a_copy_names_many_dispatches_in_order_and_only_up_to_its_limit() -> None:
    dispatched = [(f"task-{index}", f"engine-{index % 3}", index % 2) for index in range(50)]
    frames = destinations_frames(Session(KEY), dispatched)
    assert read_destinations(Session(KEY), frames) == [(m, e) for m, e, _ in dispatched]
    with pytest.raises(ValueError):
        destinations_frames(Session(KEY), [])
    with pytest.raises(ValueError):
        destinations_frames(Session(KEY), [("t", "e", 0)] * (MAX_ENTRIES + 1))
    too_many = orjson.dumps([["t", "e", 0]] * (MAX_ENTRIES + 1))
    session = Session(KEY)
    with pytest.raises(MalformedMessage):
        read_destinations(session, [b"task_dest", session.sign([b"task_dest", too_many]), too_many])
