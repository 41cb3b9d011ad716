"""The reading half of the same-host fast path: mapping a message's segments, safely.

A mixin of :class:`corral.sharedmem.SharedMemory` (one object per process both writes and
reads, under one lock), kept apart so that module holds the writer's side (segments made,
pooled and reused) and this one what a reader may trust. A reader maps only a regular file of
this cluster, owned by its own user, private (no group or other bits) and of exactly the
announced size; anything else is refused (:class:`~corral.errors.SharedMemoryRefused`)
without reading a byte. It maps through a link of its own, which lives exactly as long as
one of its mappings does (the writer reuses a segment only when no link is left), and maps
private copy-on-write: the receiver gets writable memory without a copy, and its writes never
reach another reader.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
import weakref
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Final

from corral.errors import SharedMemoryRefused
from corral.protocol.session import Frame, Message, frame_view
from corral.protocol.shm import (
    METADATA_KEY,
    SegmentRef,
    decode_refs,
    link_name,
    named_segments,
)
from corral.shmsweep import unlink_name

if TYPE_CHECKING:
    from corral.protocol.shm import Settings

__all__ = ["SegmentReading"]

_OPEN_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


class SegmentReading:
    """What :class:`~corral.sharedmem.SharedMemory` does with the segments others wrote
    (see the module doc)."""

    if TYPE_CHECKING:  # provided by SharedMemory
        settings: Settings | None
        host: str | None
        shm_dir: Path
        reader: int  # whose links this process reads through
        _lock: threading.RLock
        _mapped: dict[Path, int]  # reader links of this process -> live mappings

    def resolve(self, msg: Message) -> Message:
        """``msg`` with every referenced segment mapped in place of its empty frame, and the
        ``shm`` key gone from the metadata. Call only on a verified message.

        Raises SharedMemoryRefused when a reference is malformed, names no segment of this
        cluster readable by this process, or the segment's owner, mode or size is wrong; this
        process's links of a refused message are removed, so that it leaves nothing behind.
        """
        value = msg.metadata.get(METADATA_KEY)
        if value is None:
            return msg
        settings = self.settings
        if settings is None or self.host is None:
            raise SharedMemoryRefused(
                "a message refers to shared memory, but this process has the fast path off "
                "(another host, or no usable /dev/shm): the sender should not have used it"
            )
        refs = decode_refs(value, [memoryview(frame_view(frame)).nbytes for frame in msg.buffers])
        buffers: list[Frame] = list(msg.buffers)
        failure: SharedMemoryRefused | None = None
        for ref in refs:
            try:
                buffers[ref.index] = self._map(settings.prefix, ref)
            except SharedMemoryRefused as err:
                failure = failure or err
        if failure is not None:
            raise failure
        metadata = {key: item for key, item in msg.metadata.items() if key != METADATA_KEY}
        return replace(msg, metadata=metadata, buffers=tuple(buffers))

    def _map(self, prefix: str, ref: SegmentRef) -> memoryview:
        """Map one segment through this process's own link, which lives exactly as long as a
        mapping of it does (the writer reuses a segment only when no link is left)."""
        name = ref.name_for(prefix, self.reader)
        own = self.shm_dir / link_name(prefix, ref.writer, ref.token, self.reader)
        with self._lock:
            linked = own in self._mapped
            self._mapped[own] = self._mapped.get(own, 0) + 1
        try:
            if ref.hold and not linked:
                try:
                    os.link(self.shm_dir / name, own)
                except FileExistsError:  # made by the writer (a request's Hub link), or ours
                    pass
                except FileNotFoundError:  # settled: readable only through a link made before
                    if not os.path.lexists(own):
                        raise
            fd = os.open(own, _OPEN_FLAGS)
        except FileNotFoundError:
            self._unmapped(own)
            raise SharedMemoryRefused(
                f"shared-memory segment {name} does not exist: its writer exited (or its "
                "message was settled) before it was read, it was meant for another process, or "
                "the name is forged"
            ) from None
        except OSError as err:
            self._unmapped(own)
            raise SharedMemoryRefused(f"cannot open shared-memory segment {name}: {err}") from None
        try:
            problem = _problem(os.fstat(fd), ref.size)
            if problem is not None:
                raise SharedMemoryRefused(f"refused shared-memory segment {name}: {problem}")
            mapping = mmap.mmap(
                fd, ref.size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        except (OSError, SharedMemoryRefused) as err:
            self._unmapped(own)
            if isinstance(err, SharedMemoryRefused):
                raise
            raise SharedMemoryRefused(f"cannot map shared-memory segment {name}: {err}") from None
        finally:
            os.close(fd)
        weakref.finalize(mapping, self._unmapped, own)
        return memoryview(mapping)

    def _unmapped(self, own: Path) -> None:
        """One mapping through ``own`` is gone; the last one removes the link."""
        with self._lock:
            left = self._mapped.get(own, 1) - 1
            if left > 0:
                self._mapped[own] = left
                return
            self._mapped.pop(own, None)
        unlink_name(own)

    def forget(self, msg: Message) -> None:
        """This process will not read the segments of ``msg`` (the Hub keeps a request without
        its buffers): remove the links the writer made for it (:meth:`export`'s
        ``hub_link``), unless a mapping of its own holds one. Malformed references are left
        alone; well-formed ones count even when the buffers did not come (the scheduler
        leaves out what the store would not keep)."""
        self.forget_named(msg.metadata.get(METADATA_KEY))

    def forget_named(self, refs: object) -> None:
        """:meth:`forget` for a message's ``shm`` references alone (``refs``, as they came):
        the Hub's links to the segments of a request whose copy will never come."""
        settings = self.settings
        if settings is None:
            return
        for writer, token in named_segments(refs):
            own = self.shm_dir / link_name(settings.prefix, writer, token, self.reader)
            with self._lock:
                if own in self._mapped:
                    continue
            unlink_name(own)

    def strip(self, msg: Message) -> Message:
        """``msg`` without its references, mapping nothing (the Hub records requests without
        their buffers)."""
        if METADATA_KEY not in msg.metadata:
            return msg
        metadata = {key: item for key, item in msg.metadata.items() if key != METADATA_KEY}
        return replace(msg, metadata=metadata)


def _problem(info: os.stat_result, size: int) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid != os.getuid():
        return f"owned by uid {info.st_uid}, not this user"
    if info.st_mode & 0o077:
        return f"mode {stat.S_IMODE(info.st_mode):04o} is not private (0600)"
    if info.st_size != size:
        return f"it holds {info.st_size} bytes, the reference says {size}"
    return None
