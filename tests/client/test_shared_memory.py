"""The same-host fast path on a real cluster: push, pull, apply, load-balanced tasks, scatter,
gather and results fetched from the Hub travel through /dev/shm, bit-exact, beside a client
that has it off; the Hub records the data; forged references are refused."""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from corral import Client, Reference
from corral.client.link import IOHandler
from corral.errors import RemoteError
from corral.protocol.serialize import pack_apply_message
from corral.protocol.session import Session
from corral.protocol.shm import encode_refs, link_name
from corral.sharedmem import SHM_DIR, SharedMemory
from tests.conftest import running_cluster
from tests.polling import until
from tests.test_sharedmem import OBJECTS, assert_bit_exact

THRESHOLD = 4096
BIG = np.random.default_rng(3).random(250_000)  # 2 MB, no NaN: compared with ==


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_cluster(
        tmp_path_factory.mktemp("shm"), 2, controller_args=["--shm-threshold", str(THRESHOLD)]
    ) as started:
        yield started


@pytest.fixture(scope="module")
def fast(cluster: Any) -> Client:
    client: Client = cluster.client
    client.wait_for_engines(2, timeout=30)
    return client


@pytest.fixture(scope="module")
def slow(cluster: Any) -> Iterator[Client]:
    with Client(cluster.path / "corral-client.json", shm_threshold=0) as client:
        client.wait_for_engines(2, timeout=30)
        yield client


def prefix_of(client: Client) -> str:
    assert client._shm.settings is not None
    return client._shm.settings.prefix


def mapped(value: Any) -> bool:
    """Whether ``value`` (an array or memoryview) lives in a shared-memory mapping."""
    while isinstance(value, np.ndarray):
        value = value.base
    return isinstance(value, memoryview) and isinstance(value.obj, mmap.mmap)


def identity(value: Any) -> Any:
    return value


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: type(o).__name__)
def test_every_kind_of_buffer_is_bit_exact_both_ways(fast: Client, slow: Client, obj: Any) -> None:
    for client in (fast, slow):
        view = client[0]
        assert_bit_exact(obj, view.apply_sync(identity, obj))
        view.push({"x": obj}, block=True)
        assert_bit_exact(obj, view.pull("x", block=True))


def test_large_arrays_are_mapped_on_the_fast_path_only(fast: Client, slow: Client) -> None:
    fast[0].push({"big": BIG}, block=True)
    assert fast[0].apply_sync(mapped, Reference("big")) is True
    pulled = fast[0].pull("big", block=True)
    assert mapped(pulled) and pulled.flags.writeable and np.array_equal(pulled, BIG)
    slow[0].push({"big": BIG}, block=True)
    assert slow[0].apply_sync(mapped, Reference("big")) is False
    pulled = slow[0].pull("big", block=True)
    assert not mapped(pulled) and np.array_equal(pulled, BIG)


def test_small_buffers_take_the_socket_path(fast: Client) -> None:
    small = np.arange(100.0)
    fast[0].push({"small": small}, block=True)
    assert fast[0].apply_sync(mapped, Reference("small")) is False
    assert not mapped(fast[0].pull("small", block=True))


def test_load_balanced_scatter_and_gather(fast: Client) -> None:
    result = fast.load_balanced_view().apply_async(lambda a: a * 2, BIG).get(timeout=60)
    assert mapped(result) and np.array_equal(result, BIG * 2)
    view = fast[:]
    view.scatter("part", BIG, block=True)
    assert view.apply_sync(mapped, Reference("part")) == [True, True]
    gathered = view.gather("part", block=True)
    assert np.array_equal(gathered, BIG)


def test_the_hub_records_the_data_and_other_clients_get_it_through_shm(
    fast: Client, cluster: Any
) -> None:
    result = fast[1].apply_async(lambda a: a + 1, BIG)
    assert np.array_equal(result.get(timeout=60), BIG + 1)
    msg_id = result.msg_ids[0]
    until(lambda: not fast.result_status([msg_id])["pending"], 30, "the Hub to record it")
    (record,) = fast.db_query({"msg_id": msg_id}, keys=["result_buffers", "result_metadata"])
    assert "shm" not in record["result_metadata"]
    assert bytes(record["result_buffers"][-1]) == (BIG + 1).tobytes()
    with Client(cluster.path / "corral-client.json") as other:
        fetched = other.get_result(msg_id).get(timeout=30)
        assert mapped(fetched) and np.array_equal(fetched, BIG + 1)


def test_a_forged_reference_in_a_signed_request_is_refused(fast: Client) -> None:
    forged = {"index": 1, "size": 4096, "writer": os.getpid(), "token": "0" * 32, "hold": True}
    head = pack_apply_message(identity, (1,), {})
    target = fast.resolve_targets(0)[0]
    msg_id = fast.send_request(
        "mux", "apply_request", {}, buffers=[*head, b""], metadata={"shm": [forged]}, target=target
    )
    with pytest.raises(RemoteError) as info:
        fast.get_result(msg_id).get(timeout=30)
    assert info.value.ename == "SharedMemoryRefused" and "does not exist" in info.value.evalue
    assert fast[0].apply_sync(identity, 5) == 5  # the engine goes on


def test_a_reference_in_a_message_with_a_bad_signature_is_never_mapped(fast: Client) -> None:
    """The reference names a reader link for the engine: mapping it removes the link. Signed
    with the wrong key, the engine drops it and the link stays; signed right, it is read."""
    settings = fast._shm.settings
    assert settings is not None
    pid = fast[0].apply_sync(os.getpid)
    writer = SharedMemory(settings)
    frames, refs = writer.export(pack_apply_message(identity, (BIG,), {}), [pid])
    writer.release(refs)
    link = SHM_DIR / link_name(settings.prefix, os.getpid(), refs[0].token, pid)
    uuid = fast.resolve_targets(0)[0][1]
    try:
        for key, read in ((b"not the cluster key", False), (fast.session.key, True)):
            session = Session(key)
            msg = session.msg(
                "apply_request", {}, metadata={"shm": encode_refs(refs)}, buffers=frames
            )
            fast._io.send(b"mux", session.serialize(msg, [uuid.encode()]))
            # the next request on the same socket reaches the engine after it
            assert fast[0].apply_sync(identity, 1) == 1
            if read:  # mapped, run, and dropped with the request: the link goes with it
                until(lambda: not link.exists(), 30, "the engine to drop its mapping")
            else:
                assert link.exists(), "a message that failed its signature was mapped"
    finally:
        link.unlink(missing_ok=True)
        writer.close()


def test_a_late_second_reply_whose_segment_is_gone_is_dropped_quietly(
    fast: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply to a request already answered, naming a segment read with the first answer
    (an engine sends its kept replies again to a restarted controller), is dropped without a
    warning: nothing is lost. (On 3e5d890 every such duplicate logged "refused the buffers of
    a reply ... or the name is forged", seen in chaos runs with controller restarts.) A
    pending request whose reply names a missing segment still fails, with the warning."""
    done = fast[0].apply_async(identity, 1)
    assert done.get(timeout=30) == 1
    gone = {"index": 0, "size": 4096, "writer": os.getpid(), "token": "0" * 32, "hold": True}
    late = fast.session.msg(
        "apply_reply",
        {"status": "ok"},
        parent={"msg_id": done.msg_ids[0], "msg_type": "apply_request"},
        metadata={"shm": [gone]},
    )
    handler = IOHandler(fast)
    with caplog.at_level(logging.DEBUG, logger="corral.client"):
        handler.on_reply(late)
    assert done.get(timeout=1) == 1
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "corral.client"]
    assert not [m for level, m in messages if level >= logging.WARNING], messages
    assert any("dropped a late reply" in m for _, m in messages), messages
