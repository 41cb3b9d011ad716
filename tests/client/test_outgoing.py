"""A request made ready to leave (corral.client.outgoing): what ``Client.prepare_request`` does
once it has chosen the request's metadata and buffers, without sockets.

The sending itself (prepare, dispatch, a gone target) runs against real clusters in
test_client.py, test_direct.py and test_loadbalanced.py."""

from __future__ import annotations

from typing import Any

from corral.client.outgoing import OutgoingRequest, make_request
from corral.client.records import Records
from corral.client.recovery import Resender
from corral.client.submitter import OutgoingRequest as SeenBySubmitter
from corral.protocol.session import DELIMITER, Session

SESSION = Session(b"key")
SHARED: dict[str, Any] = {}


def make(
    records: Records,
    resender: Resender,
    channel: str = "task",
    msg_type: str = "apply_request",
    content: dict[str, Any] | None = None,
    **options: Any,
) -> OutgoingRequest:
    settings: dict[str, Any] = {
        "buffers": (b"call",),
        "metadata": None,
        "shared_metadata": SHARED,
        "target": None,
        "in_history": True,
        "track": False,
        "header": None,
        **options,
    }
    return make_request(
        SESSION,
        records,
        resender,
        channel,
        msg_type,
        {} if content is None else content,
        settings["buffers"],
        settings["metadata"],
        settings["shared_metadata"],
        SESSION.json_frame(settings["shared_metadata"]),
        settings["target"],
        settings["in_history"],
        settings["track"],
        settings["header"],
    )


def test_a_task_is_signed_tracked_and_held_for_a_resend_until_settled() -> None:
    records, resender = Records(), Resender()
    request = make(records, resender, metadata={"label": "x"})
    assert isinstance(request, SeenBySubmitter)  # the submitter's name for the same class
    assert request.frames[0] == DELIMITER and request.frames[-1] == b"call"
    msg = SESSION.deserialize(request.frames[1:])  # verified: a good signature
    assert msg.msg_id == request.msg_id and msg.metadata == {"label": "x"}
    assert (request.channel, request.track_from, request.engine_uuid) == ("task", None, None)
    assert request.msg_id in records.futures and request.msg_id in records.outstanding
    assert request.msg_id in resender.held
    again = resender.take(request.msg_id, SESSION)
    assert again is not None and again.buffers == (b"call",)


def test_a_direct_request_names_its_engine_and_is_not_held() -> None:
    records, resender = Records(), Resender()
    request = make(records, resender, "mux", target=(3, "engine-uuid"), track=True)
    assert request.frames[0] == b"engine-uuid" and request.frames[1] == DELIMITER
    assert (request.engine_id, request.engine_uuid) == (3, "engine-uuid")
    assert request.track_from == len(request.frames) - 1  # the one data buffer
    assert not resender.held and request.msg_id in records.futures


def test_the_shared_metadata_is_sent_as_it_is_and_other_metadata_is_copied() -> None:
    records, resender = Records(), Resender()
    shared = {"shm_reader": {"host": "h", "pid": 1}}
    request = make(records, resender, metadata=shared, shared_metadata=shared)
    assert SESSION.deserialize(request.frames[1:]).metadata == shared
    mine = {"label": "y"}
    request = make(records, resender, metadata=mine)
    mine["label"] = "changed after"
    assert SESSION.deserialize(request.frames[1:]).metadata == {"label": "y"}


def test_the_shared_metadata_is_written_once_its_frame_signed_in_every_request() -> None:
    records, resender = Records(), Resender()
    shared = {"shm_reader": {"host": "h", "pid": 1}}
    written = SESSION.json_frame(shared)
    assert written == SESSION.serialize(SESSION.msg("apply_request", metadata=shared))[4]
    # the frame given is the one sent (here another dict's, to tell them apart), signed
    marker = SESSION.json_frame({"shm_reader": "written once"})
    for _ in range(2):
        request = make_request(
            SESSION, records, resender, "task", "apply_request", {}, (b"call",), shared,
            shared, marker, None, True, False, None,
        )  # fmt: skip
        assert request.frames[4] is marker
        assert SESSION.deserialize(request.frames[1:]).metadata == {"shm_reader": "written once"}
    assert SESSION.json_frame({}) == b"{}"


def test_a_request_with_content_is_checked_and_a_held_header_is_not_tracked_again() -> None:
    records, resender = Records(), Resender()
    request = make(records, resender, "mux", "execute_request", {"code": "1", "silent": True})
    assert SESSION.deserialize(request.frames[1:]).content == {"code": "1", "silent": True}
    header = SESSION.header("apply_request")
    request = make(records, resender, header=header, in_history=False)
    assert request.msg_id == header["msg_id"] and request.msg_id not in records.futures
    assert request.msg_id in resender.held
