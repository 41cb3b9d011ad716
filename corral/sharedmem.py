"""Segments in /dev/shm: writing, mapping, removing and sweeping them.

The I/O half of the same-host fast path; :mod:`corral.protocol.shm` holds the names, the
reference format and the decisions. One :class:`SharedMemory` per process (client, engine,
controller) knows the cluster's :class:`~corral.protocol.shm.Settings` and this process's host
identity, and turns outgoing buffers into segments and incoming references back into memory.

Guarantees a caller can rely on:

- A segment is created with ``O_EXCL | O_NOFOLLOW``, mode 0600, under an unguessable name, and
  filled with ``pwrite`` before its reference is sent: a full /dev/shm is an ``ENOSPC`` error
  here (turned into :class:`~corral.errors.SharedMemoryError`, after a free-space check), never a
  bus error on a mapping nor a silently truncated buffer.
- A reader maps only a regular file of this cluster, owned by its own user, private (no group or
  other bits) and of exactly the announced size; anything else is refused
  (:class:`~corral.errors.SharedMemoryRefused`) without reading a byte. Mappings are private
  copy-on-write: the receiver gets writable memory without a copy, and its writes never reach
  another reader.
- Removing a name never invalidates a mapping: the memory lives until its last mapping is gone.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import secrets
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import psutil

from corral.errors import SharedMemoryError, SharedMemoryRefused
from corral.protocol.session import Frame, Message, frame_view
from corral.protocol.shm import (
    METADATA_KEY,
    SegmentRef,
    Settings,
    decode_refs,
    large_buffers,
    link_name,
    plan_sweep,
    reader_metadata,
    reader_of,
)

__all__ = ["SHM_DIR", "SharedMemory", "cluster_prefix", "host_identity", "pid_alive", "sweep"]

log = logging.getLogger("corral.sharedmem")

SHM_DIR: Final = Path("/dev/shm")
RESERVE_BYTES: Final = 64 << 20  # left free in /dev/shm and in RAM after a segment is written
_CREATE_FLAGS: Final = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
_WRITE_CHUNK: Final = 1 << 30


def host_identity(shm_dir: Path = SHM_DIR) -> str | None:
    """Who can share segments with whom: equal on two processes exactly when they see the same
    /dev/shm (same boot, same mount), the same pids (the sweep checks owners by pid) and run as
    the same user (segments are 0600). None when ``shm_dir`` is not a usable folder."""
    try:
        info = os.stat(shm_dir)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or not os.access(shm_dir, os.W_OK | os.X_OK):
        return None
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = os.uname().nodename
    try:
        pid_namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pid_namespace = 0
    seed = f"{boot}:{info.st_dev}:{info.st_ino}:{pid_namespace}:{os.getuid()}"
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def cluster_prefix(cluster_path: str | os.PathLike[str]) -> str:
    """The name prefix of one cluster's segments: the same for every run of the cluster, so a
    controller started again finds what a crashed run left behind."""
    where = os.path.abspath(os.path.expanduser(os.fspath(cluster_path)))
    return "corral-" + hashlib.sha256(where.encode()).hexdigest()[:16]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a running (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def sweep(
    prefix: str, shm_dir: Path = SHM_DIR, alive: Callable[[int], bool] = pid_alive
) -> list[str]:
    """Remove the names under ``prefix`` whose owner is dead (see
    :func:`corral.protocol.shm.plan_sweep`); the names removed."""
    try:
        names = [name for name in os.listdir(shm_dir) if name.startswith(prefix)]
    except OSError:
        return []
    doomed = plan_sweep(prefix, names, alive)
    for name in doomed:
        _unlink(shm_dir / name)
    if doomed:
        log.info("shared memory: reclaimed %d segment names of dead processes", len(doomed))
    return doomed


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class SharedMemory:
    """This process's end of the fast path. ``settings`` None (or no usable /dev/shm) turns it
    off: :meth:`export` then returns the buffers unchanged and :meth:`resolve` refuses any
    reference. Thread-safe: it holds no state but its settings."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        shm_dir: Path = SHM_DIR,
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        self.shm_dir = shm_dir
        self.host = host if host is not None else host_identity(shm_dir)
        self.pid = pid if pid is not None else os.getpid()
        self.settings = settings

    def configure(self, settings: Settings | None) -> None:
        """New settings (an engine learns them from each registration reply)."""
        self.settings = settings

    @property
    def enabled(self) -> bool:
        return self.settings is not None and self.host is not None

    def same_host(self, host: object) -> bool:
        """Whether a peer with this host identity can read this process's segments."""
        return self.enabled and isinstance(host, str) and host == self.host

    def reader_metadata(self) -> dict[str, Any]:
        """Metadata a request carries so that its reply may come as segments (empty if off)."""
        if not self.enabled:
            return {}
        assert self.host is not None
        return reader_metadata(self.host, self.pid)

    # ------------------------------------------------------------------ writing

    def export(
        self, frames: Sequence[Frame], readers: Sequence[int] | None = None
    ) -> tuple[list[Frame], list[SegmentRef]]:
        """Put the buffers of at least ``threshold`` bytes into segments.

        ``readers`` None: *held* segments, read under the writer's name until :meth:`release`.
        Otherwise one link per reader pid, each removed by its reader; call :meth:`release`
        once the message is sent. Returns the frames to send (an empty frame where a buffer
        became a segment) and the references for the metadata. Raises SharedMemoryError, having
        created nothing, when /dev/shm or RAM lacks the space or refuses the write.
        """
        settings = self.settings
        if settings is None or self.host is None or not frames:
            return list(frames), []
        views = [memoryview(frame_view(frame)) for frame in frames]
        indices = large_buffers([view.nbytes for view in views], settings.threshold)
        if not indices:
            return list(frames), []
        self._check_space(sum(views[index].nbytes for index in indices))
        refs: list[SegmentRef] = []
        created: list[Path] = []
        try:
            for index in indices:
                token = secrets.token_hex(16)
                path = self.shm_dir / link_name(settings.prefix, self.pid, token, None)
                self._write(path, views[index], created)
                for reader in dict.fromkeys(readers or ()):
                    link = self.shm_dir / link_name(settings.prefix, self.pid, token, reader)
                    os.link(path, link)
                    created.append(link)
                refs.append(
                    SegmentRef(index, views[index].nbytes, self.pid, token, readers is None)
                )
        except OSError as err:
            for path in created:
                _unlink(path)
            raise SharedMemoryError(
                f"could not write {views[indices[len(refs)]].nbytes} bytes to shared memory in "
                f"{self.shm_dir}: {err.strerror or err}. Free memory, or turn the same-host fast "
                "path off (shm_threshold=0)"
            ) from None
        out = list(frames)
        for ref in refs:
            out[ref.index] = b""
        return out, refs

    def export_reply(
        self, request_metadata: Mapping[str, Any], frames: Sequence[Frame], *, hub_reads: bool
    ) -> tuple[list[Frame], list[SegmentRef]]:
        """Segments for the buffers of a reply, when its requester advertised a reader on this
        host (and, with ``hub_reads``, the Hub can read them too: it records every result)."""
        settings = self.settings
        reader = reader_of(request_metadata)
        if settings is None or reader is None or not self.same_host(reader[0]):
            return list(frames), []
        readers = [reader[1]]
        if hub_reads:
            if settings.host != self.host or not settings.hub_pid:
                return list(frames), []
            readers.append(settings.hub_pid)
        return self.export(frames, readers)

    def release(self, refs: Sequence[SegmentRef]) -> None:
        """Remove this writer's own names of ``refs``: a held segment's data is then gone for
        anyone who has not mapped it yet; a segment with reader links lives on in them."""
        settings = self.settings
        if settings is None:
            return
        for ref in refs:
            if ref.writer == self.pid:
                _unlink(self.shm_dir / link_name(settings.prefix, ref.writer, ref.token, None))

    def _check_space(self, size: int) -> None:
        try:
            fs = os.statvfs(self.shm_dir)
        except OSError as err:
            raise SharedMemoryError(f"cannot use {self.shm_dir}: {err.strerror}") from None
        free = fs.f_bavail * fs.f_frsize
        available = psutil.virtual_memory().available
        if size + RESERVE_BYTES > min(free, available):
            where = (
                f"{self.shm_dir} has {free} bytes free"
                if free < available
                else (f"the machine has {available} bytes of memory available")
            )
            raise SharedMemoryError(
                f"{size} bytes do not fit in shared memory: {where} (and keeps "
                f"{RESERVE_BYTES} in reserve). Send less at once, free memory, or turn the "
                "same-host fast path off (shm_threshold=0)"
            )

    @staticmethod
    def _write(path: Path, view: memoryview, created: list[Path]) -> None:
        fd = os.open(path, _CREATE_FLAGS, 0o600)
        created.append(path)
        try:
            os.fchmod(fd, 0o600)
            data = view.cast("B") if view.format != "B" or view.ndim != 1 else view
            offset, size = 0, data.nbytes
            while offset < size:
                written = os.pwrite(fd, data[offset : offset + _WRITE_CHUNK], offset)
                if written <= 0:
                    raise OSError(0, "the write made no progress")
                offset += written
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ reading

    def resolve(self, msg: Message) -> Message:
        """``msg`` with every referenced segment mapped in place of its empty frame, and the
        ``shm`` key gone from the metadata. Call only on a verified message.

        Raises SharedMemoryRefused when a reference is malformed, names no segment of this
        cluster readable by this process, or the segment's owner, mode or size is wrong. Every
        reader link of this process named by a valid reference is removed even then, so that
        a refused message leaves nothing behind.
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
        name = ref.name_for(prefix, self.pid)
        path = self.shm_dir / name
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            raise SharedMemoryRefused(
                f"shared-memory segment {name} does not exist: its writer exited (or released "
                "it) before it was read, it was meant for another process, or the name is forged"
            ) from None
        except OSError as err:
            raise SharedMemoryRefused(f"cannot open shared-memory segment {name}: {err}") from None
        try:
            info = os.fstat(fd)
            problem = _problem(info, ref.size)
            if problem is not None:
                raise SharedMemoryRefused(f"refused shared-memory segment {name}: {problem}")
            mapping = mmap.mmap(
                fd, ref.size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as err:
            raise SharedMemoryRefused(f"cannot map shared-memory segment {name}: {err}") from None
        finally:
            os.close(fd)
        if not ref.hold:
            _unlink(path)
        return memoryview(mapping)

    def strip(self, msg: Message) -> Message:
        """``msg`` without its references, mapping nothing (the Hub records requests without
        their buffers)."""
        if METADATA_KEY not in msg.metadata:
            return msg
        metadata = {key: item for key, item in msg.metadata.items() if key != METADATA_KEY}
        return replace(msg, metadata=metadata)

    # ------------------------------------------------------------------ sweeping

    def sweep(self, *, final: bool = False) -> list[str]:
        """Reclaim the names of dead processes; ``final`` counts this process as dead too (a
        controller stopping: its Hub reads nothing more)."""
        settings = self.settings
        if settings is None:
            return []
        if final:
            return sweep(
                settings.prefix, self.shm_dir, lambda pid: pid != self.pid and pid_alive(pid)
            )
        return sweep(settings.prefix, self.shm_dir)


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
