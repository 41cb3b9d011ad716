"""The reading half of the fast path (corral/shmread.py): mappings are private copies, every
way a reference can be wrong is refused, and the Hub forgets what it will not read. Real
files in /dev/shm, with test_sharedmem.py's fixture and helpers."""

from __future__ import annotations

import gc
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from corral.errors import SharedMemoryRefused, SignatureError
from corral.protocol.serialize import deserialize_object, serialize_object
from corral.protocol.session import Message, Session
from corral.protocol.shm import HUB, Settings, encode_refs, link_name
from corral.sharedmem import SHM_DIR, SharedMemory, cluster_prefix
from tests import test_sharedmem
from tests.test_sharedmem import KEY, THRESHOLD, message, names, random_array

settings = test_sharedmem.settings  # the same fixture: a cluster prefix of the test's own


def test_received_arrays_are_mapped_writable_and_private(settings: Settings) -> None:
    array = random_array("f8", (1000,))
    writer = SharedMemory(settings)  # kept: a collected writer removes its names
    frames, refs = writer.export(serialize_object(array))
    reader = SharedMemory(settings)
    first = deserialize_object(reader.resolve(message(frames, refs)).buffers)
    second = deserialize_object(reader.resolve(message(frames, refs)).buffers)
    assert isinstance(first, np.ndarray) and isinstance(second, np.ndarray)
    assert first.flags.writeable
    first[:] = 0  # copy-on-write: another mapping and the segment itself are untouched
    assert second.tobytes() == array.tobytes()
    name = link_name(settings.prefix, os.getpid(), refs[0].token, None)
    assert (SHM_DIR / name).read_bytes() == array.tobytes()
    assert stat.S_IMODE(os.stat(SHM_DIR / name).st_mode) == 0o600


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
    writer = SharedMemory(other)
    _, refs = writer.export(serialize_object(random_array("u1", (9000,))))
    try:
        with pytest.raises(SharedMemoryRefused, match="does not exist"):
            SharedMemory(settings).resolve(forged(settings, refs[0].token))
    finally:
        writer.release(refs)
        writer.close()
    assert names(other) == []


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
    link = SHM_DIR / link_name(settings.prefix, os.getpid(), refs[0].token, os.getpid())
    assert link.exists(), "the reader link is still there: nothing mapped it"
    link.unlink()
    writer.close()


def test_a_process_with_the_fast_path_off_refuses_references(settings: Settings) -> None:
    frames, refs = SharedMemory(settings).export(serialize_object(random_array("u1", (9000,))))
    with pytest.raises(SharedMemoryRefused, match="fast path off"):
        SharedMemory(None).resolve(message(frames, refs))


def test_the_hub_forgets_what_it_will_not_read(settings: Settings) -> None:
    """A request the store keeps without its buffers (over its limit, or its copy came
    without them) leaves no link of the Hub's behind; a mapping of its own keeps its link."""
    writer, hub, me = SharedMemory(settings), SharedMemory(settings, hub=True), os.getpid()
    frames, held = writer.export(serialize_object(random_array("u1", (9000,))), hub_link=True)
    without_buffers = Session(KEY).msg("apply_request", {}, metadata={"shm": encode_refs(held)})
    hub.forget(without_buffers)
    assert names(settings) == [link_name(settings.prefix, me, held[0].token, None)]
    frames, second = writer.export(serialize_object(random_array("u1", (9000,))), hub_link=True)
    mapped = hub.resolve(message(frames, second))
    hub.forget(message(frames, second))  # mapped: its link stays with the mapping
    assert link_name(settings.prefix, me, second[0].token, HUB) in names(settings)
    del mapped
    gc.collect()
    writer.release(held + second)
    writer.close()
    assert names(settings) == []


def test_the_hub_removes_its_links_that_no_copy_will_release(settings: Settings) -> None:
    """A Hub link that outlived every other name of its segment (its writer settled it and
    dropped it from its pool; its copy died with its engine) goes at the Hub's sweep once it
    stayed so for the grace (none here); a link the Hub maps stays, with its mapping."""
    writer, hub, me = (
        SharedMemory(settings, pool_bytes=0),
        SharedMemory(settings, hub=True),
        os.getpid(),
    )
    hub._lone.grace = 0.0  # noqa: SLF001
    lost_frames, lost = writer.export(serialize_object(random_array("u1", (9000,))), hub_link=True)
    frames, kept = writer.export(serialize_object(random_array("u1", (9000,))), hub_link=True)
    mapped = hub.resolve(message(frames, kept))
    writer.release(lost + kept)  # no pool: the writer's names go
    kept_link = link_name(settings.prefix, me, kept[0].token, HUB)
    lost_link = link_name(settings.prefix, me, lost[0].token, HUB)
    assert names(settings) == sorted([kept_link, lost_link])
    assert hub.sweep() == [lost_link]
    assert names(settings) == [kept_link]
    del mapped
    gc.collect()
    assert names(settings) == []
    writer.close()
