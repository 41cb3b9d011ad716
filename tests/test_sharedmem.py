"""Segments in /dev/shm: export and resolve through real files and real zmq sockets, every kind
of buffer the serializer makes, pooling, sweeping and the Hub's links (what a reader refuses:
test_shmread.py, with this module's fixture and helpers)."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

import corral.sharedmem as sharedmem
import corral.shmcopy as shmcopy
from corral.errors import SharedMemoryError, SharedMemoryRefused
from corral.protocol.serialize import deserialize_object, serialize_object
from corral.protocol.session import Message, Session
from corral.protocol.shm import HUB, SegmentRef, Settings, encode_refs, link_name, pool_name
from corral.sharedmem import (
    SHM_DIR,
    SharedMemory,
    cluster_prefix,
    host_identity,
    sweep,
    sweep_others,
)

THRESHOLD = 4096
KEY = b"k" * 32


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings of a cluster of our own (its prefix is unique to this test); whatever the test
    leaves in /dev/shm under it is checked for and removed."""
    host = host_identity()
    assert host is not None, "this machine has no usable /dev/shm"
    chosen = Settings(cluster_prefix(tmp_path), host, THRESHOLD)
    yield chosen
    for name in names(chosen):
        os.unlink(SHM_DIR / name)


def names(settings: Settings) -> list[str]:
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(settings.prefix))


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    port = b.bind_to_random_port("tcp://127.0.0.1")
    a.connect(f"tcp://127.0.0.1:{port}")
    yield a, b
    a.close(0)
    b.close(0)
    context.term()


def send_and_receive(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
    writer: SharedMemory | None,
    reader: SharedMemory,
    obj: object,
    readers: list[int] | None = None,
) -> tuple[object, Message, list[SegmentRef]]:
    """``obj`` serialized, exported (unless ``writer`` is None), signed, sent over zmq,
    received, verified, resolved and deserialized."""
    session = Session(KEY)
    frames: list[Any] = list(serialize_object(obj))
    metadata: dict[str, Any] = {}
    refs: list[SegmentRef] = []
    if writer is not None:
        frames, refs = writer.export(frames, readers)
        if refs:
            metadata["shm"] = encode_refs(refs)
    msg = session.msg("apply_reply", {"status": "ok"}, metadata=metadata, buffers=frames)
    pair[0].send_multipart(session.serialize(msg), copy=False)
    if writer is not None and readers is not None:
        writer.release(refs)  # sent: only the readers' links remain
    received = Session(KEY).feed(pair[1].recv_multipart(copy=False))
    resolved = reader.resolve(received)
    return deserialize_object(resolved.buffers), resolved, refs


def random_array(dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    dtype = np.dtype(dtype)
    raw = np.random.default_rng(7).integers(0, 256, int(np.prod(shape)) * dtype.itemsize, "u1")
    return raw.view(dtype).reshape(shape)


RECORD = np.dtype([("a", "i4"), ("b", "f8"), ("c", "S3")])
OBJECTS: list[Any] = [
    random_array("f8", (300, 40)),
    random_array("f4", (5000,)),
    random_array("c16", (40, 30)),
    random_array("i1", (9000,)),
    random_array("u8", (70, 70)),
    random_array("?", (8000,)).astype(bool),
    random_array("M8[ns]", (1000,)),
    random_array("m8[s]", (1000,)),
    random_array(RECORD, (700,)),
    np.asfortranarray(random_array("f8", (90, 70))),
    random_array("f8", (200, 90))[::2, ::3],  # not contiguous: copied once, then a segment
    np.zeros((0,)),
    np.array(2.5),
    b"\x00\xff" * 5000,
    bytearray(b"\x01\x02" * 4000),
    memoryview(random_array("i4", (30, 100))),
    {"nested": [random_array("f2", (6000,)), (b"x" * 10, random_array("i2", (3000,)))]},
    ["small", 1, None, 2.5, {"k": b"v" * 5000}],
]


def assert_bit_exact(expected: Any, actual: Any) -> None:
    if isinstance(expected, np.ndarray):
        assert type(actual) is np.ndarray
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape)
        assert actual.tobytes() == expected.tobytes()
    elif isinstance(expected, memoryview):
        assert isinstance(actual, memoryview)
        assert (actual.format, actual.shape) == (expected.format, expected.shape)
        assert actual.tobytes() == expected.tobytes()
    elif isinstance(expected, dict):
        assert type(actual) is dict and expected.keys() == actual.keys()
        for key in expected:
            assert_bit_exact(expected[key], actual[key])
    elif isinstance(expected, list | tuple):
        assert type(actual) is type(expected) and len(actual) == len(expected)
        for one, other in zip(expected, actual, strict=True):
            assert_bit_exact(one, other)
    else:
        assert type(actual) is type(expected) and actual == expected


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: type(o).__name__)
@pytest.mark.parametrize("readers", [None, "links"])
def test_every_kind_of_buffer_is_bit_exact_through_both_paths(
    settings: Settings, pair: Any, obj: Any, readers: str | None
) -> None:
    writer = SharedMemory(settings)
    me = SharedMemory(settings)
    by_socket, _, _ = send_and_receive(pair, None, me, obj)
    assert_bit_exact(obj, by_socket)
    assert names(settings) == []
    by_shm, resolved, refs = send_and_receive(
        pair, writer, me, obj, [os.getpid()] if readers else None
    )
    assert_bit_exact(obj, by_shm)
    assert "shm" not in resolved.metadata
    large = [b for b in serialize_object(obj) if memoryview(b).nbytes >= THRESHOLD]
    assert len(refs) == len(large)
    links = [name for name in names(settings) if name.endswith(f"-r{os.getpid()}")]
    assert len(links) == len(refs), "a reader holds a link while it maps a segment"
    del by_shm, resolved
    gc.collect()
    assert not [n for n in names(settings) if "-r" in n], "the links go with the mappings"
    writer.release(refs)
    writer.close()
    assert names(settings) == []


def test_below_the_threshold_nothing_changes(settings: Settings) -> None:
    frames = serialize_object([np.arange(100.0), b"y" * 2000])
    out, refs = SharedMemory(settings).export(frames)
    assert refs == [] and out == frames
    assert names(settings) == []


def test_a_reply_of_small_bytes_is_sent_as_it_is(settings: Settings) -> None:
    """An engine's usual reply (small bytes frames) goes out unchanged, whatever the request's
    metadata says; a large buffer of the same reply still becomes a segment for its reader."""
    shm = SharedMemory(settings)
    reader = {"shm_reader": {"host": settings.host, "pid": os.getpid()}}
    small = serialize_object(7)
    for metadata in ({}, reader, {"shm_reader": "not a reader"}):
        assert shm.export_reply(metadata, small, hub_reads=True) == (small, [])
    large = serialize_object(np.arange(THRESHOLD, dtype=np.float64))
    out, refs = shm.export_reply(reader, large, hub_reads=True)
    assert len(refs) == 1 and out[refs[0].index] == b""
    shm.release(refs)
    shm.close()


def test_segment_names_through_a_message_s_life(settings: Settings) -> None:
    writer, me = SharedMemory(settings), os.getpid()
    frames, held = writer.export(serialize_object(random_array("u1", (9000,))))
    token = held[0].token
    assert names(settings) == [link_name(settings.prefix, me, token, None)]
    reader = SharedMemory(settings, pid=11)
    mapped = reader.resolve(message(frames, held))  # a reader links the held name, then maps
    assert names(settings) == sorted(link_name(settings.prefix, me, token, r) for r in (None, 11))
    writer.release(held)  # settled: the writer's name goes to the pool
    assert names(settings) == sorted(
        [link_name(settings.prefix, me, token, 11), pool(settings, token)]
    )
    del mapped
    gc.collect()
    assert names(settings) == [pool(settings, token)]
    frames, linked = writer.export(serialize_object(random_array("u1", (9000,))), [11, 12])
    new = linked[0].token
    assert new != token, "a reused segment gets a new name: late readers of the old find nothing"
    assert names(settings) == sorted(link_name(settings.prefix, me, new, r) for r in (None, 11, 12))
    writer.release(linked)  # sent: the readers' links keep it
    with pytest.raises(SharedMemoryRefused, match="does not exist"):
        reader.resolve(message(frames, held))
    _, third = writer.export(serialize_object(random_array("u1", (9000,))))
    (pooled,) = [name for name in names(settings) if name.endswith("-p")]
    assert os.stat(SHM_DIR / pooled).st_nlink == 3, "a segment readers still hold is not reused"
    assert link_name(settings.prefix, me, third[0].token, None) in names(settings)
    for name in names(settings):
        if name.endswith(("-r11", "-r12")):
            os.unlink(SHM_DIR / name)
    writer.close()


def pool(settings: Settings, token: str) -> str:
    return f"{settings.prefix}-{os.getpid()}-{token}-p"


def test_a_reused_segment_carries_the_new_data(settings: Settings) -> None:
    writer, reader = SharedMemory(settings), SharedMemory(settings, pid=11)
    for round in range(4):
        array = np.full(2000, float(round))
        frames, refs = writer.export(serialize_object(array), [11])
        writer.release(refs)
        back = deserialize_object(reader.resolve(message(frames, refs)).buffers)
        assert_bit_exact(array, back)
        del back
        gc.collect()
    assert len(names(settings)) == 1, "one segment, reused every round"
    writer.close()
    assert names(settings) == []


@pytest.mark.parametrize("size", [shmcopy.PARALLEL_COPY_BYTES + 12345, 3 << 20])
def test_a_large_copy_split_between_threads_is_bit_exact(size: int) -> None:
    """Above PARALLEL_COPY_BYTES the copy is split between threads (an odd size, so the last
    part is short); below it one plain copy. Either way the bytes land exactly, from a read-only
    source too, and the mapping keeps no exported buffer (it can be closed at once)."""
    import mmap

    source = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    mapping = mmap.mmap(-1, size + 100)
    mapping[size:] = b"\xff" * 100
    shmcopy.copy_into(mapping, memoryview(source))
    assert mapping[:size] == source
    assert mapping[size:] == b"\xff" * 100, "nothing written past the buffer"
    mapping.close()


def message(frames: list[Any], refs: Any, metadata: dict[str, Any] | None = None) -> Message:
    return Session(KEY).msg(
        "apply_reply",
        {"status": "ok"},
        metadata={"shm": encode_refs(refs), **(metadata or {})},
        buffers=frames,
    )


def test_no_room_is_a_clear_error_and_leaves_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = os.statvfs(SHM_DIR).f_bavail * os.statvfs(SHM_DIR).f_frsize
    monkeypatch.setattr(sharedmem, "RESERVE_BYTES", free)  # as if /dev/shm were full
    with pytest.raises(SharedMemoryError, match="do not fit in shared memory"):
        SharedMemory(settings).export(serialize_object(random_array("u1", (9000,))))
    assert names(settings) == []


def test_sweep_reclaims_names_of_dead_processes_only(settings: Settings) -> None:
    mine = SharedMemory(settings)
    _, held = mine.export(serialize_object(random_array("u1", (9000,))))
    dead = 2**22 + 12345  # above the default pid_max of 4194304: no such process
    assert not sharedmem.pid_alive(dead)
    _, orphan = SharedMemory(settings, pid=dead).export(
        serialize_object(random_array("u1", (9000,))), [os.getpid()]
    )
    _, dead_reader = mine.export(serialize_object(random_array("u1", (9000,))), [dead])
    mine.release(dead_reader)
    removed = sweep(settings.prefix)
    assert sorted(removed) == sorted(
        [
            link_name(settings.prefix, dead, orphan[0].token, None),
            link_name(settings.prefix, dead, orphan[0].token, os.getpid()),
            link_name(settings.prefix, os.getpid(), dead_reader[0].token, dead),
        ]
    )
    assert names(settings) == sorted(
        [
            link_name(settings.prefix, os.getpid(), held[0].token, None),
            pool(settings, dead_reader[0].token),
        ]
    )
    mine.sweep(final=True)  # a stopping controller: its pool, then what only it could read
    assert names(settings) == []


def test_a_collected_writer_removes_its_names_and_keeps_reader_links(settings: Settings) -> None:
    """A writer nobody can release any more (dropped without close) leaves nothing but the
    links its readers hold."""
    writer = SharedMemory(settings)
    _, held = writer.export(serialize_object(random_array("u1", (9000,))))
    _, linked = writer.export(serialize_object(random_array("u1", (9000,))), [os.getpid()])
    _, pooled = writer.export(serialize_object(random_array("u1", (9000,))))
    writer.release(pooled)
    assert len(names(settings)) == 4
    del writer
    gc.collect()
    assert names(settings) == [
        link_name(settings.prefix, os.getpid(), linked[0].token, os.getpid())
    ]


EXITING_WRITER = """
import os, signal, sys
import numpy
from pathlib import Path
from corral.protocol.serialize import serialize_object
from corral.protocol.shm import Settings
from corral.sharedmem import SharedMemory

folder = Path(sys.argv[1])
writer = SharedMemory(Settings(sys.argv[2], "host", 4096), shm_dir=folder, host="host")
_, held = writer.export(serialize_object(numpy.zeros(9000, "u1")))
_, pooled = writer.export(serialize_object(numpy.zeros(9000, "u1")))
writer.release(pooled)
print(len(os.listdir(folder)), flush=True)
if sys.argv[3] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_a_writer_process_that_ends_leaves_nothing(tmp_path: Path, how: str) -> None:
    """It exits without closing or releasing: its names go with it. It is SIGKILLed: another
    cluster's controller starting reclaims them (``sweep_others``), none of its own cluster
    being left to do it. (A folder of its own stands for /dev/shm, so that no other test run
    on the machine is touched.)"""
    folder = tmp_path / "shm"
    folder.mkdir()
    prefix = cluster_prefix(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", EXITING_WRITER, str(folder), prefix, how],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.stdout.strip() == "2", done.stderr
    if how == "exit":
        assert done.returncode == 0, done.stderr
        assert os.listdir(folder) == []
        return
    assert done.returncode == -signal.SIGKILL
    left = sorted(os.listdir(folder))
    assert sorted(name[-1] for name in left) == ["p", "w"]
    assert sweep_others(prefix, folder, min_age=0) == [], "its own cluster sweeps its names"
    assert sweep_others(None, folder) == [], "not yet a minute old"
    assert sorted(sweep_others(None, folder, min_age=0)) == left
    assert os.listdir(folder) == []


def test_sweep_others_spares_live_writers_and_hub_links(tmp_path: Path) -> None:
    folder = tmp_path / "shm"
    folder.mkdir()
    other = Settings(cluster_prefix(tmp_path / "other"), "host", THRESHOLD)
    dead = 2**22 + 54321  # above the default pid_max: no such process
    live = SharedMemory(other, shm_dir=folder, host="host")
    _, held = live.export(serialize_object(random_array("u1", (9000,))))
    gone = SharedMemory(other, shm_dir=folder, host="host", pid=dead)
    _, orphan = gone.export(serialize_object(random_array("u1", (9000,))))  # never sent
    _, hub_read = gone.export(serialize_object(random_array("u1", (9000,))), [HUB])
    gone.release(hub_read)  # handed off: the Hub's link outlives its writer
    removed = sweep_others(None, folder, min_age=0)
    assert sorted(removed) == sorted(
        [
            link_name(other.prefix, dead, orphan[0].token, None),
            pool_name(other.prefix, dead, hub_read[0].token),
        ]
    )
    assert sorted(os.listdir(folder)) == sorted(
        [
            link_name(other.prefix, os.getpid(), held[0].token, None),
            link_name(other.prefix, dead, hub_read[0].token, HUB),
        ]
    )
    live.release(held)
    live.close()


def test_a_request_s_hub_link_outlives_its_settling(settings: Settings) -> None:
    """The Hub reads a request from its copy, off the task's path: under load the writer may
    settle the request (its name goes to the pool) first. The link made for the Hub at export
    keeps the data readable until the Hub has read it, then goes, and the writer reuses the
    segment."""
    writer, me = SharedMemory(settings), os.getpid()
    hub = SharedMemory(settings, hub=True)
    array = random_array("f8", (3000,))
    frames, held = writer.export(serialize_object(array), hub_link=True)
    token = held[0].token
    assert held[0].hold, "still held: the engine links the writer's name itself"
    assert names(settings) == sorted(link_name(settings.prefix, me, token, r) for r in (None, HUB))
    writer.release(held)  # the reply came before the Hub read the copy
    mapped = hub.resolve(message(frames, held))
    assert_bit_exact(array, deserialize_object(mapped.buffers))
    assert names(settings) == sorted(
        [link_name(settings.prefix, me, token, HUB), pool(settings, token)]
    )
    del mapped
    gc.collect()
    assert names(settings) == [pool(settings, token)]
    _, again = writer.export(serialize_object(array), hub_link=True)
    assert link_name(settings.prefix, me, again[0].token, None) in names(settings)
    assert pool(settings, token) not in names(settings), "no reader left: the segment is reused"
    hub.forget(message(frames, again))
    writer.release(again)
    writer.close()
    assert names(settings) == []


def test_without_the_hub_link_a_settled_request_is_gone(settings: Settings) -> None:
    """What the Hub's link is for: a held name alone is taken back when the request settles."""
    writer, hub = SharedMemory(settings), SharedMemory(settings, hub=True)
    frames, held = writer.export(serialize_object(random_array("u1", (9000,))))
    writer.release(held)
    with pytest.raises(SharedMemoryRefused, match="does not exist"):
        hub.resolve(message(frames, held))
    writer.close()
    assert names(settings) == []


def test_no_hub_link_for_a_writer_on_another_host_than_the_controller(settings: Settings) -> None:
    writer = SharedMemory(replace(settings, host="another-host"), host=settings.host)
    frames, held = writer.export(serialize_object(random_array("u1", (9000,))), hub_link=True)
    assert names(settings) == [link_name(settings.prefix, os.getpid(), held[0].token, None)]
    writer.release(held)
    writer.close()
