"""Segments in /dev/shm: export and resolve through real files and real zmq sockets, every kind
of buffer the serializer makes, and every way a reference can be wrong."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

import corral.sharedmem as sharedmem
from corral.errors import SharedMemoryError, SharedMemoryRefused, SignatureError
from corral.protocol.serialize import deserialize_object, serialize_object
from corral.protocol.session import Message, Session
from corral.protocol.shm import Settings, encode_refs, link_name
from corral.sharedmem import SHM_DIR, SharedMemory, cluster_prefix, host_identity, sweep

THRESHOLD = 4096
KEY = b"k" * 32


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings of a cluster of our own (its prefix is unique to this test); whatever the test
    leaves in /dev/shm under it is checked for and removed."""
    host = host_identity()
    assert host is not None, "this machine has no usable /dev/shm"
    chosen = Settings(cluster_prefix(tmp_path), host, THRESHOLD, hub_pid=os.getpid())
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
) -> tuple[object, Message]:
    """``obj`` serialized, exported (unless ``writer`` is None), signed, sent over zmq,
    received, verified, resolved and deserialized."""
    session = Session(KEY)
    frames: list[Any] = list(serialize_object(obj))
    metadata: dict[str, Any] = {}
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
    return deserialize_object(resolved.buffers), resolved


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
    by_socket, plain = send_and_receive(pair, None, me, obj)
    by_shm, resolved = send_and_receive(pair, writer, me, obj, [os.getpid()] if readers else None)
    assert_bit_exact(obj, by_socket)
    assert_bit_exact(obj, by_shm)
    assert "shm" not in resolved.metadata
    if readers:
        assert names(settings) == [], "each reader removes its own link; the writer its name"
    large = [b for b in serialize_object(obj) if memoryview(b).nbytes >= THRESHOLD]
    assert len(names(settings)) == (0 if readers else len(large))


def test_below_the_threshold_nothing_changes(settings: Settings) -> None:
    frames = serialize_object([np.arange(100.0), b"y" * 2000])
    out, refs = SharedMemory(settings).export(frames)
    assert refs == [] and out == frames
    assert names(settings) == []


def test_received_arrays_are_mapped_writable_and_private(settings: Settings) -> None:
    array = random_array("f8", (1000,))
    frames, refs = SharedMemory(settings).export(serialize_object(array))
    reader = SharedMemory(settings)
    first = deserialize_object(reader.resolve(message(frames, refs)).buffers)
    second = deserialize_object(reader.resolve(message(frames, refs)).buffers)
    assert isinstance(first, np.ndarray) and isinstance(second, np.ndarray)
    assert first.flags.writeable
    first[:] = 0  # copy-on-write: another mapping and the segment itself are untouched
    assert second.tobytes() == array.tobytes()
    (name,) = names(settings)
    assert (SHM_DIR / name).read_bytes() == array.tobytes()
    assert stat.S_IMODE(os.stat(SHM_DIR / name).st_mode) == 0o600


def test_held_segments_live_until_released_and_reader_links_until_read(
    settings: Settings, pair: Any
) -> None:
    writer = SharedMemory(settings)
    frames, held = writer.export(serialize_object(random_array("u1", (9000,))))
    assert names(settings) == [link_name(settings.prefix, os.getpid(), held[0].token, None)]
    writer.release(held)
    assert names(settings) == []
    frames, linked = writer.export(serialize_object(random_array("u1", (9000,))), [11, 12])
    token = linked[0].token
    assert names(settings) == sorted(
        link_name(settings.prefix, os.getpid(), token, reader) for reader in (None, 11, 12)
    )
    writer.release(linked)  # sent: the writer's own name goes, the readers' stay
    assert names(settings) == sorted(
        link_name(settings.prefix, os.getpid(), token, reader) for reader in (11, 12)
    )
    SharedMemory(settings, pid=11).resolve(message(frames, linked))
    assert names(settings) == [link_name(settings.prefix, os.getpid(), token, 12)]


def message(frames: list[Any], refs: Any, metadata: dict[str, Any] | None = None) -> Message:
    return Session(KEY).msg(
        "apply_reply",
        {"status": "ok"},
        metadata={"shm": encode_refs(refs), **(metadata or {})},
        buffers=frames,
    )


def forged(settings: Settings, token: str, size: int = 9000, hold: bool = True) -> Message:
    ref = {"index": 1, "size": size, "writer": os.getpid(), "token": token, "hold": hold}
    return Session(KEY).msg(
        "apply_reply", {"status": "ok"}, metadata={"shm": [ref]}, buffers=[b"head", b""]
    )


def test_a_guessed_or_forged_name_is_refused(settings: Settings) -> None:
    reader = SharedMemory(settings)
    with pytest.raises(SharedMemoryRefused, match="does not exist"):
        reader.resolve(forged(settings, "0" * 32))


def test_a_segment_of_another_cluster_is_refused(settings: Settings, tmp_path: Path) -> None:
    other = Settings(cluster_prefix(tmp_path / "other"), settings.host, THRESHOLD)
    _, refs = SharedMemory(other).export(serialize_object(random_array("u1", (9000,))))
    try:
        with pytest.raises(SharedMemoryRefused, match="does not exist"):
            SharedMemory(settings).resolve(forged(settings, refs[0].token))
    finally:
        SharedMemory(other).release(refs)


@pytest.mark.parametrize(
    ("spoil", "why"),
    [
        (lambda path: os.chmod(path, 0o644), "not private"),
        (lambda path: os.truncate(path, 100), "holds 100 bytes"),
        (lambda path: (os.unlink(path), os.mkdir(path)), "not a regular file|cannot open"),
        (lambda path: (os.unlink(path), os.symlink("/etc/passwd", path)), "cannot open"),
    ],
    ids=["mode", "size", "directory", "symlink"],
)
def test_a_segment_that_is_not_as_announced_is_refused(
    settings: Settings, spoil: Any, why: str
) -> None:
    writer = SharedMemory(settings)
    frames, refs = writer.export(serialize_object(random_array("u1", (9000,))))
    path = SHM_DIR / link_name(settings.prefix, os.getpid(), refs[0].token, None)
    spoil(path)
    try:
        with pytest.raises(SharedMemoryRefused, match=why):
            SharedMemory(settings).resolve(message(frames, refs))
    finally:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()


def test_a_reference_from_a_message_with_a_bad_signature_is_never_read(
    settings: Settings,
) -> None:
    writer = SharedMemory(settings)
    frames, refs = writer.export(serialize_object(random_array("u1", (9000,))), [os.getpid()])
    writer.release(refs)
    wire = Session(b"wrong key").serialize(message(frames, refs))
    with pytest.raises(SignatureError):
        Session(KEY).feed(wire)  # the receiving loops resolve only what verified
    assert len(names(settings)) == 1, "the reader link is still there: nothing mapped it"


def test_a_process_with_the_fast_path_off_refuses_references(settings: Settings) -> None:
    frames, refs = SharedMemory(settings).export(serialize_object(random_array("u1", (9000,))))
    with pytest.raises(SharedMemoryRefused, match="fast path off"):
        SharedMemory(None).resolve(message(frames, refs))


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
    assert names(settings) == [link_name(settings.prefix, os.getpid(), held[0].token, None)]
    assert mine.sweep(final=True) == names(settings) or names(settings) == []
    assert names(settings) == []
