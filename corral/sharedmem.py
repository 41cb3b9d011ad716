"""Segments in /dev/shm: writing, mapping, removing and sweeping them.

The I/O half of the same-host fast path; :mod:`corral.protocol.shm` holds the names, the
reference format and the decisions. One :class:`SharedMemory` per process (client, engine,
controller) knows the cluster's :class:`~corral.protocol.shm.Settings` and this process's host
identity, and turns outgoing buffers into segments and incoming references back into memory.

Guarantees a caller can rely on:

- A segment is created with ``O_EXCL | O_NOFOLLOW``, mode 0600, under an unguessable name, its
  every page allocated with ``posix_fallocate`` before the writer copies the buffer in through
  its own mapping: a full /dev/shm is an ``ENOSPC`` error there (turned into
  :class:`~corral.errors.SharedMemoryError`, after a free-space check), never a bus error on a
  mapping nor a silently truncated buffer.
- A writer keeps settled segments mapped in a pool and copies the next buffer of a fitting size
  into one of them, once no reader maps it any more (each reader holds a link to it exactly as
  long as it maps it); it renames the segment to a new token first, so a late reader of the old
  message finds nothing rather than new data. Fresh pages cost a page fault each (on this 2-core
  VM several times a memory copy); reused ones do not.
- A reader maps only a regular file of this cluster, owned by its own user, private and of
  exactly the announced size, and maps it private copy-on-write (:mod:`corral.shmread`, the
  reading half, a mixin of :class:`SharedMemory`).
- Removing a name never invalidates a mapping: the memory lives until its last mapping is gone.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import secrets
import stat
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psutil

from corral.errors import SharedMemoryError
from corral.protocol.session import Frame, frame_view
from corral.protocol.shm import (
    HUB,
    LONE_HUB_LINK_GRACE,
    LoneHubLinks,
    SegmentRef,
    Settings,
    large_buffers,
    link_name,
    pool_name,
    reader_metadata,
    reader_of,
)
from corral.shmcopy import copy_into
from corral.shmread import SegmentReading
from corral.shmsweep import SHM_DIR, pid_alive, sweep, sweep_others
from corral.shmsweep import unlink_name as _unlink

__all__ = [
    "SHM_DIR",
    "SharedMemory",
    "cluster_prefix",
    "host_identity",
    "pid_alive",
    "sweep",
    "sweep_others",
]

log = logging.getLogger("corral.sharedmem")

RESERVE_BYTES: Final = 64 << 20  # left free in /dev/shm and in RAM after a segment is written
MAX_POOL_BYTES: Final = 4 << 30  # settled segments one process keeps for reuse, at most
POOL_IDLE: Final = 60.0  # seconds a settled segment waits for reuse before it is removed
_CREATE_FLAGS: Final = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
_POPULATE: Final = getattr(mmap, "MAP_POPULATE", 0)


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


@dataclass(eq=False)
class _Segment:
    """A segment this process wrote, kept open and mapped (shared) so that writing into it
    again is a memory copy into pages that are already there."""

    fd: int
    mapping: mmap.mmap
    capacity: int  # bytes mapped
    size: int  # bytes the file holds now (at most capacity)
    token: str
    prefix: str
    released_at: float = 0.0


@dataclass(eq=False)
class _Owned:
    """The segments one :class:`SharedMemory` wrote and has not removed: those of messages on
    their way (``live``, under their ``w`` name) and its pool (``p`` names). Kept apart from the
    SharedMemory so that its finalizer can remove them without keeping it alive."""

    shm_dir: Path
    pid: int
    live: dict[str, _Segment]
    pool: list[_Segment]


def _remove_owned(owned: _Owned) -> None:
    """A SharedMemory was collected, or its process exits: its names go (reader links stay,
    for their readers), its mappings and descriptors are closed. Names written under the pid
    of another process (tests simulate dead writers so) are that process's to leave."""
    if owned.pid != os.getpid():
        return
    segments = [
        *((s, link_name_w) for s in owned.live.values()),
        *((s, pool_name) for s in owned.pool),
    ]
    owned.live.clear()
    owned.pool.clear()
    for segment, name in segments:
        _unlink(owned.shm_dir / name(segment.prefix, owned.pid, segment.token))
        segment.mapping.close()
        os.close(segment.fd)


def _all_small_bytes(frames: Sequence[Frame], threshold: int) -> bool:
    """Whether every frame is ``bytes`` shorter than ``threshold``: none would be a segment."""
    for frame in frames:
        if type(frame) is not bytes or len(frame) >= threshold:
            return False
    return True


class SharedMemory(SegmentReading):
    """This process's end of the fast path. ``settings`` None (or no usable /dev/shm) turns it
    off: :meth:`export` then returns the buffers unchanged and :meth:`resolve` refuses any
    reference. Thread-safe. ``pool_bytes`` bounds the settled segments kept for reuse (default:
    an eighth of /dev/shm, at most 4 GiB); :meth:`close` removes them. ``hub`` marks the
    controller's: it reads replies through the Hub's links, and its sweep removes one left
    alone for ``lone_hub_link_grace`` seconds (:class:`~corral.protocol.shm.LoneHubLinks`)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        shm_dir: Path = SHM_DIR,
        host: str | None = None,
        pid: int | None = None,
        pool_bytes: int | None = None,
        hub: bool = False,
        lone_hub_link_grace: float = LONE_HUB_LINK_GRACE,
    ) -> None:
        self.shm_dir = shm_dir
        self.host = host if host is not None else host_identity(shm_dir)
        self.pid = pid if pid is not None else os.getpid()
        self.reader = HUB if hub else self.pid  # whose links this process reads through
        self.settings = settings
        self.pool_bytes = pool_bytes if pool_bytes is not None else _default_pool(shm_dir)
        self._lock = threading.RLock()  # finalizers of mappings may run inside it (GC)
        self._live: dict[str, _Segment] = {}  # token -> segment of a message on its way
        self._pool: list[_Segment] = []  # settled, waiting for reuse
        # at exit (also without close) or when collected: no name of ours outlives us
        owned = _Owned(shm_dir, self.pid, self._live, self._pool)
        weakref.finalize(self, _remove_owned, owned)
        self._mapped: dict[Path, int] = {}  # reader links of this process -> live mappings
        self._lone = LoneHubLinks(lone_hub_link_grace)  # the Hub's: links no copy will release

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

    def close(self) -> None:
        """Remove the pooled segments' names and unmap them (segments of messages still on
        their way stay for their readers; the sweep takes them once this process is gone)."""
        with self._lock:
            pooled = self._pool[:]
            self._pool.clear()
        for segment in pooled:
            self._discard(segment, pool_name)

    # ------------------------------------------------------------------ writing

    def export(
        self,
        frames: Sequence[Frame],
        readers: Sequence[int] | None = None,
        *,
        hub_link: bool = False,
    ) -> tuple[list[Frame], list[SegmentRef]]:
        """Put the buffers of at least ``threshold`` bytes into segments.

        ``readers`` None: *held* segments, read under the writer's name until :meth:`release`.
        Otherwise one link per reader pid, each removed by its reader; call :meth:`release`
        once the message is sent. Returns the frames to send (an empty frame where a buffer
        became a segment) and the references for the metadata. Raises SharedMemoryError, having
        left nothing behind, when /dev/shm or RAM lacks the space or refuses the write.

        ``hub_link`` (held segments of a request, on the controller's host): the Hub's link is
        made now, beside the writer's name. The Hub reads a request from its copy, off the
        task's path and at a lower priority: under load the reply can reach the writer, which
        then settles the request and takes its name back, before the Hub has read the copy,
        and the data it keeps for a resubmission would be lost. The Hub removes its link once
        it has read the segment, or decided not to (:meth:`forget`).
        """
        settings = self.settings
        if settings is None or self.host is None or not frames:
            return list(frames), []
        if readers is None and hub_link and settings.host == self.host:
            link_readers: Sequence[int] = (HUB,)
        else:
            link_readers = readers or ()
        views = [memoryview(frame_view(frame)) for frame in frames]
        indices = large_buffers([view.nbytes for view in views], settings.threshold)
        if not indices:
            return list(frames), []
        refs: list[SegmentRef] = []
        done: list[tuple[_Segment, list[Path]]] = []
        try:
            for index in indices:
                view = views[index]
                data = view.cast("B") if view.format != "B" or view.ndim != 1 else view
                segment = self._acquire(settings.prefix, data.nbytes)
                links: list[Path] = []
                done.append((segment, links))
                copy_into(segment.mapping, data)
                path = self.shm_dir / link_name(settings.prefix, self.pid, segment.token, None)
                for reader in dict.fromkeys(link_readers):
                    link = self.shm_dir / link_name(
                        settings.prefix, self.pid, segment.token, reader
                    )
                    os.link(path, link)
                    links.append(link)
                refs.append(SegmentRef(index, data.nbytes, self.pid, segment.token, not readers))
        except (OSError, SharedMemoryError) as err:
            for segment, links in done:
                for link in links:
                    _unlink(link)
                self._discard(segment, link_name_w)
            if isinstance(err, SharedMemoryError):
                raise
            raise SharedMemoryError(
                f"could not write {views[indices[len(refs)]].nbytes} bytes to shared memory in "
                f"{self.shm_dir}: {err.strerror or err}. Free memory, or turn the same-host fast "
                "path off (shm_threshold=0)"
            ) from None
        with self._lock:
            for segment, _ in done:
                self._live[segment.token] = segment
        out = list(frames)
        for ref in refs:
            out[ref.index] = b""
        return out, refs

    def export_reply(
        self, request_metadata: Mapping[str, Any], frames: Sequence[Frame], *, hub_reads: bool
    ) -> tuple[list[Frame], list[SegmentRef]]:
        """Segments for the buffers of a reply, when its requester advertised a reader on this
        host (and, with ``hub_reads``, the Hub can read them too: it records every result).
        A reply whose frames are all small bytes (nearly every task's result) is answered
        before the requester's metadata is read."""
        settings = self.settings
        if settings is None or _all_small_bytes(frames, settings.threshold):
            return list(frames), []
        reader = reader_of(request_metadata)
        if settings is None or reader is None or not self.same_host(reader[0]):
            return list(frames), []
        readers = [reader[1]]
        if hub_reads:
            if settings.host != self.host:
                return list(frames), []
            readers.append(HUB)
        return self.export(frames, readers)

    def release(self, refs: Sequence[SegmentRef]) -> None:
        """The message of ``refs`` is settled (a request answered or failed, a reply sent):
        its segments leave their ``w`` name for the pool (reader links keep them alive for
        their readers), or are removed when the pool is full."""
        settings = self.settings
        if settings is None:
            return
        now = time.monotonic()
        for ref in refs:
            with self._lock:
                segment = self._live.pop(ref.token, None) if ref.writer == self.pid else None
            if segment is None:
                continue
            old = self.shm_dir / link_name(settings.prefix, self.pid, segment.token, None)
            try:
                os.rename(old, self.shm_dir / pool_name(settings.prefix, self.pid, segment.token))
            except OSError:
                self._discard(segment, link_name_w)
                continue
            segment.released_at = now
            evicted: list[_Segment] = []
            with self._lock:
                self._pool.append(segment)
                evicted = self._trim(now)
            for old_segment in evicted:
                self._discard(old_segment, pool_name)

    def _trim(self, now: float) -> list[_Segment]:
        """(Lock held) Pool entries to discard: idle too long, or beyond ``pool_bytes``."""
        keep: list[_Segment] = []
        evicted: list[_Segment] = []
        total = 0
        for segment in sorted(self._pool, key=lambda s: s.released_at, reverse=True):
            if now - segment.released_at > POOL_IDLE or total + segment.capacity > self.pool_bytes:
                evicted.append(segment)
            else:
                keep.append(segment)
                total += segment.capacity
        self._pool[:] = keep
        return evicted

    def _acquire(self, prefix: str, size: int) -> _Segment:
        """A segment of exactly ``size`` bytes under a fresh ``w`` name: from the pool when one
        fits and no reader holds it any more, else a new one."""
        with self._lock:
            fitting = sorted(
                (s for s in self._pool if size <= s.capacity <= 2 * size + (1 << 20)),
                key=lambda s: s.capacity,
            )
            for segment in fitting:
                self._pool.remove(segment)
        for index, segment in enumerate(fitting):
            reused = self._reuse(prefix, segment, size)
            if reused:
                with self._lock:
                    self._pool.extend(fitting[index + 1 :])
                return segment
        return self._create(prefix, size)

    def _reuse(self, prefix: str, segment: _Segment, size: int) -> bool:
        """Rename a pooled segment to a new token, then take it if no reader link is left.
        The rename comes first: after it no reader can link the old name, so a count of one
        is final."""
        token = secrets.token_hex(16)
        old = self.shm_dir / pool_name(prefix, self.pid, segment.token)
        new = self.shm_dir / link_name(prefix, self.pid, token, None)
        try:
            os.rename(old, new)
        except OSError:
            self._discard(segment, pool_name)
            return False
        segment.token = token
        if os.fstat(segment.fd).st_nlink != 1:  # a reader still maps it: not now
            os.rename(new, self.shm_dir / pool_name(prefix, self.pid, token))
            with self._lock:
                self._pool.append(segment)
            return False
        try:
            if size > segment.size:
                os.posix_fallocate(segment.fd, 0, size)  # ENOSPC here, not a bus error later
            elif size < segment.size:
                os.ftruncate(segment.fd, size)
        except OSError:
            self._discard(segment, link_name_w)
            raise
        segment.size = size
        return True

    def _create(self, prefix: str, size: int) -> _Segment:
        self._check_space(size)
        token = secrets.token_hex(16)
        path = self.shm_dir / link_name(prefix, self.pid, token, None)
        fd = os.open(path, _CREATE_FLAGS, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.posix_fallocate(fd, 0, size)  # every page exists before it is written through
            # every page mapped now, in one call, not by one fault each on the first copy
            mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE)
        except BaseException:
            os.close(fd)
            _unlink(path)
            raise
        return _Segment(fd, mapping, size, size, token, prefix)

    def _discard(self, segment: _Segment, name: Callable[[str, int, str], str]) -> None:
        settings = self.settings
        if settings is not None:
            _unlink(self.shm_dir / name(settings.prefix, self.pid, segment.token))
        segment.mapping.close()
        os.close(segment.fd)

    def _check_space(self, size: int) -> None:
        try:
            fs = os.statvfs(self.shm_dir)
        except OSError as err:
            raise SharedMemoryError(f"cannot use {self.shm_dir}: {err.strerror}") from None
        free = fs.f_bavail * fs.f_frsize
        available = psutil.virtual_memory().available
        if size + RESERVE_BYTES <= min(free, available):
            return
        if self._pool:  # idle segments of our own come first
            self.close()
            self._check_space(size)
            return
        where = (
            f"{self.shm_dir} has {free} bytes free"
            if free < available
            else f"the machine has {available} bytes of memory available"
        )
        raise SharedMemoryError(
            f"{size} bytes do not fit in shared memory: {where} (and keeps "
            f"{RESERVE_BYTES} in reserve). Send less at once, free memory, or turn the "
            "same-host fast path off (shm_threshold=0)"
        )

    # ------------------------------------------------------------------ sweeping

    def sweep(
        self, *, hub_alive: bool = True, final: bool = False, others: bool = False
    ) -> list[str]:
        """Reclaim the names of dead processes (and with ``hub_alive`` False the Hub's links: a
        controller starting). ``final`` counts this process, and the Hub, as dead too (a
        controller stopping: it reads nothing more). ``others``: also what dead processes of
        other clusters left (:func:`sweep_others`; a controller starting)."""
        settings = self.settings
        if settings is None:
            return []
        if others:
            sweep_others(settings.prefix, self.shm_dir)
        if final:
            self.close()
            return sweep(
                settings.prefix,
                self.shm_dir,
                lambda pid: pid != self.pid and pid_alive(pid),
                hub_alive=False,
            )
        swept = sweep(settings.prefix, self.shm_dir, hub_alive=hub_alive)
        if self.reader == HUB and hub_alive:
            swept.extend(self._remove_lone_hub_links(settings.prefix))
        return swept

    def _remove_lone_hub_links(self, prefix: str) -> list[str]:
        """(The Hub's periodic sweep.) Remove its links that have been the last name of their
        segment, unmapped, for a while (:class:`~corral.protocol.shm.LoneHubLinks`: a request
        whose copy died with its engine and whose client is gone too)."""
        try:
            names = [name for name in os.listdir(self.shm_dir) if name.startswith(prefix)]
        except OSError:
            return []
        with self._lock:
            mapped = {path.name for path in self._mapped}
        removed: list[str] = []
        for name in self._lone.due(prefix, names, mapped, time.monotonic()):
            with self._lock:  # not if mapped since the listing (a copy came after all)
                if self.shm_dir / name in self._mapped:
                    continue
                _unlink(self.shm_dir / name)
            removed.append(name)
        if removed:
            log.info("shared memory: removed %d Hub link(s) no copy will release", len(removed))
        return removed


def link_name_w(prefix: str, writer: int, token: str) -> str:
    """The writer's ``w`` name (a three-argument form of :func:`link_name`)."""
    return link_name(prefix, writer, token, None)


def _default_pool(shm_dir: Path) -> int:
    try:
        fs = os.statvfs(shm_dir)
    except OSError:
        return 0
    return min(MAX_POOL_BYTES, fs.f_blocks * fs.f_frsize // 8)
