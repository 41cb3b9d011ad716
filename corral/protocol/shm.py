"""The same-host fast path, bytes only: shared-memory references in signed metadata.

When sender and receiver share a host, a buffer of at least ``threshold`` bytes does not travel
through the sockets: the sender writes it into a file of /dev/shm (a *segment*) and the message
carries a reference to it instead. The message itself still goes over ZeroMQ, signed as always.
This module holds every decision that needs no system call: the names of segments, the
reference format and its validation, who may read what, and which names a sweep may remove.
:mod:`corral.sharedmem` does the files and the mapping.

Wire addition (docs/wire-flows.md, "Shared memory"). In the metadata (which is signed, unlike
the buffers, so a reference from a message that fails its signature is never even parsed)::

    "shm": [{"index": 0, "size": 104857600, "writer": 4242, "token": "<32 hex>", "hold": true}]

and at each ``index`` of the buffers an empty frame keeps the other buffers' positions. A
requester that can map replies says so with ``"shm_reader": {"host": HOST, "pid": PID}``.

Names: ``<prefix>-<writer pid>-<token>-<link>`` where ``prefix`` is ``corral-`` and 16 hex digits
derived from the cluster folder, ``token`` is 16 random bytes (unguessable), and ``link`` says
who the name is for:

- ``w``: the writer's name while the message is on its way. For a *held* segment
  (``"hold": true``: requests, whose reader is not known in advance) readers find it under this
  name; for a segment with reader links it marks "not handed off yet".
- ``r<pid>``: a reader's link (``h`` for the Hub's, see :data:`HUB`). For a reply (``"hold":
  false``; both the client and the Hub read it) the writer makes one per reader before sending;
  for a held segment each reader links the ``w`` name itself before mapping it. A reader
  removes its link when it drops its mapping.
- ``p``: the writer's name once the message is settled (a request answered or failed, a reply
  sent): the segment waits in the writer's pool. The writer reuses it (renaming it ``w`` under a
  new token, so that no late reader of the old message can open it) only when no reader link is
  left, which makes reusing it a plain memory copy into pages already mapped.

The memory is freed by the kernel when the last name is gone and the last mapping is dropped.
A process that dies leaves names behind; :func:`plan_sweep` picks those whose owner is dead,
and the controller sweeps at start, periodically and at stop.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from corral.errors import SharedMemoryRefused

__all__ = [
    "DEFAULT_THRESHOLD",
    "HUB",
    "METADATA_KEY",
    "READER_KEY",
    "LinkName",
    "LONE_HUB_LINK_GRACE",
    "check_lone_hub_link_grace",
    "LoneHubLinks",
    "SegmentRef",
    "Settings",
    "decode_refs",
    "encode_refs",
    "large_buffers",
    "link_name",
    "named_segments",
    "parse_link",
    "pool_name",
    "plan_sweep",
    "reader_metadata",
    "reader_of",
]

DEFAULT_THRESHOLD: Final = 1 << 20
METADATA_KEY: Final = "shm"
READER_KEY: Final = "shm_reader"
MAX_SEGMENT_BYTES: Final = 1 << 40
_MAX_PID: Final = 1 << 31
_PREFIX = re.compile(r"corral-[0-9a-f]{16}")
_NAME = re.compile(
    r"(?P<prefix>corral-[0-9a-f]{16})-(?P<writer>[1-9][0-9]{0,9})-"
    r"(?P<token>[0-9a-f]{32})-(?P<link>w|p|h|r[1-9][0-9]{0,9})"
)
_TOKEN = re.compile(r"[0-9a-f]{32}")
_REF_KEYS = frozenset({"index", "size", "writer", "token", "hold"})
HUB: Final = 0
"""The reader id of the Hub: its link is named ``h``, not after a pid, because the controller
may be restarted (under another pid) while engines keep the settings they registered with."""


@dataclass(frozen=True)
class Settings:
    """A cluster's fast-path settings, as the controller publishes them.

    ``prefix`` names the cluster's segments, ``host`` is the controller's host identity (the
    Hub can map only segments of its own host), ``threshold`` the smallest buffer that travels
    by reference.
    """

    prefix: str
    host: str
    threshold: int = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise ValueError(f"not a segment prefix: {self.prefix!r}")
        if self.threshold < 1:
            raise ValueError(f"shm threshold must be at least 1 byte, got {self.threshold}")

    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "host": self.host,
            "threshold": self.threshold,
        }

    @classmethod
    def from_json(cls, value: object) -> Settings | None:
        """Settings from a connection file or registration reply; None when the fast path is
        off there (no section, or a malformed one: the socket path always works)."""
        if not isinstance(value, Mapping):
            return None
        prefix, host = value.get("prefix"), value.get("host")
        threshold = value.get("threshold", DEFAULT_THRESHOLD)
        if not (isinstance(prefix, str) and isinstance(host, str) and host):
            return None
        if not _is_int(threshold):
            return None
        try:
            return cls(prefix, host, threshold)
        except ValueError:
            return None


@dataclass(frozen=True)
class SegmentRef:
    """One buffer that travels as a segment: its index among the message's buffers, its exact
    size, who wrote it and its random token; ``hold`` says which name a reader opens."""

    index: int
    size: int
    writer: int
    token: str
    hold: bool

    def name_for(self, prefix: str, reader_pid: int) -> str:
        """The name the process ``reader_pid`` opens to read this segment."""
        return link_name(prefix, self.writer, self.token, None if self.hold else reader_pid)


@dataclass(frozen=True)
class LinkName:
    """A parsed segment name: ``reader`` is the pid of a reader link, None for the writer's
    names (``pooled`` tells its ``p`` name from its ``w`` name)."""

    prefix: str
    writer: int
    token: str
    reader: int | None
    pooled: bool = False


def link_name(prefix: str, writer: int, token: str, reader: int | None) -> str:
    """The writer's ``w`` name (``reader`` None), the Hub's link (:data:`HUB`) or a reader's."""
    link = "w" if reader is None else "h" if reader == HUB else f"r{reader}"
    return f"{prefix}-{writer}-{token}-{link}"


def pool_name(prefix: str, writer: int, token: str) -> str:
    """The writer's name of a settled segment waiting in its pool."""
    return f"{prefix}-{writer}-{token}-p"


def parse_link(name: str) -> LinkName | None:
    """The parts of a segment name, or None if it is not one (of any corral cluster)."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    link = match["link"]
    reader = int(link[1:]) if link.startswith("r") else HUB if link == "h" else None
    return LinkName(match["prefix"], int(match["writer"]), match["token"], reader, link == "p")


def large_buffers(sizes: Sequence[int], threshold: int) -> list[int]:
    """Indices of the buffers that should travel as segments."""
    return [index for index, size in enumerate(sizes) if size >= threshold]


def encode_refs(refs: Iterable[SegmentRef]) -> list[dict[str, Any]]:
    return [
        {
            "index": ref.index,
            "size": ref.size,
            "writer": ref.writer,
            "token": ref.token,
            "hold": ref.hold,
        }
        for ref in refs
    ]


def decode_refs(value: object, frame_sizes: Sequence[int]) -> list[SegmentRef]:
    """The references of a verified message's metadata, checked against its buffers.

    Raises SharedMemoryRefused for anything that is not exactly what a corral sender writes:
    a reference to a missing or non-empty buffer slot, a repeated index, a bad token or pid.
    """
    if not isinstance(value, list) or not value:
        raise SharedMemoryRefused("the shm metadata is not a non-empty list of references")
    refs: list[SegmentRef] = []
    seen: set[int] = set()
    for item in value:
        if not isinstance(item, dict) or set(item) != _REF_KEYS:
            raise SharedMemoryRefused(f"malformed shared-memory reference {item!r:.120}")
        index, size, writer = item["index"], item["size"], item["writer"]
        token, hold = item["token"], item["hold"]
        if not (_is_int(index) and 0 <= index < len(frame_sizes)) or index in seen:
            raise SharedMemoryRefused(f"shared-memory reference to buffer {index!r}: no such slot")
        if frame_sizes[index] != 0:
            raise SharedMemoryRefused(f"buffer {index} is both sent and referenced")
        if not (_is_int(size) and 0 < size <= MAX_SEGMENT_BYTES):
            raise SharedMemoryRefused(f"shared-memory reference with size {size!r}")
        if not (_is_int(writer) and 0 < writer < _MAX_PID):
            raise SharedMemoryRefused(f"shared-memory reference with writer {writer!r}")
        if not (isinstance(token, str) and _TOKEN.fullmatch(token)):
            raise SharedMemoryRefused(f"shared-memory reference with token {token!r:.60}")
        if not isinstance(hold, bool):
            raise SharedMemoryRefused("shared-memory reference whose hold is not a bool")
        seen.add(index)
        refs.append(SegmentRef(index, size, writer, token, hold))
    return refs


def named_segments(value: object) -> list[tuple[int, str]]:
    """(writer, token) of each well-formed reference in ``value``, ignoring the rest and the
    buffer slots: the names a reader may have been given links under, for one that will not
    read the message (a copy that came without its buffers is still owed the cleanup)."""
    named: list[tuple[int, str]] = []
    for item in value if isinstance(value, list) else ():
        if not isinstance(item, dict):
            continue
        writer, token = item.get("writer"), item.get("token")
        if not (isinstance(writer, int) and _is_int(writer) and 0 < writer < _MAX_PID):
            continue
        if isinstance(token, str) and _TOKEN.fullmatch(token):
            named.append((writer, token))
    return named


def reader_metadata(host: str, pid: int) -> dict[str, Any]:
    """What a requester adds to its metadata so that replies may come as segments."""
    return {READER_KEY: {"host": host, "pid": pid}}


def reader_of(metadata: Mapping[str, Any]) -> tuple[str, int] | None:
    """(host, pid) a requester advertised, or None."""
    value = metadata.get(READER_KEY)
    if not isinstance(value, Mapping):
        return None
    host, pid = value.get("host"), value.get("pid")
    if isinstance(host, str) and isinstance(pid, int) and _is_int(pid) and 0 < pid < _MAX_PID:
        return host, pid
    return None


def plan_sweep(
    prefix: str,
    names: Iterable[str],
    alive: Callable[[int], bool],
) -> list[str]:
    """The names under ``prefix`` that nothing can read any more.

    The ``w`` and ``p`` names of a dead writer go. A ``w`` name means the segment may never
    have been handed off, so its reader links go too (a reader that had not opened it yet gets
    a clear error, not a leak); a ``p`` name means it was, and live readers keep their links.
    A reader link whose reader is dead goes. ``alive`` is asked once per pid (and about
    :data:`HUB`, for the Hub's links).
    """
    known: dict[int, bool] = {}

    def is_alive(pid: int) -> bool:
        if pid not in known:
            known[pid] = alive(pid)
        return known[pid]

    by_token: dict[tuple[int, str], list[tuple[str, LinkName]]] = {}
    for name in names:
        parsed = parse_link(name)
        if parsed is None or parsed.prefix != prefix:
            continue
        by_token.setdefault((parsed.writer, parsed.token), []).append((name, parsed))
    doomed: list[str] = []
    for (writer, _), links in by_token.items():
        writer_dead = not is_alive(writer)
        orphaned = writer_dead and any(link.reader is None and not link.pooled for _, link in links)
        for name, link in links:
            if link.reader is None:
                gone = writer_dead
            else:
                gone = orphaned or not is_alive(link.reader)
            if gone:
                doomed.append(name)
    return doomed


LONE_HUB_LINK_GRACE: Final = 60.0  # seconds a Hub link is seen alone before it is removed


def check_lone_hub_link_grace(grace: float) -> float:
    """``grace`` if it is a usable grace (seconds, finite, not negative), else ValueError. A
    controller flag sets it (``--lone-hub-link-grace``): the tests that wait a lone link out
    shorten it; the default leaves a copy behind a burst a minute to come."""
    if not 0 <= grace < float("inf"):
        raise ValueError(f"the lone Hub link grace must be 0 or more seconds, not {grace}")
    return grace


class LoneHubLinks:
    """The Hub's links (``h``) that are the last name of their segment, and since when.

    The Hub removes its link to a request's segment once it has read the request's copy (or
    been told the copy died: ``direct_lost_request``). A copy can die with no one left to say
    so: a client and its engine killed together (one host's processes), after the client had
    settled the request (its reply came while the copy waited on the engine's copies PUSH, or
    it failed the task and died before reporting it). The writer's names then go (settled,
    then swept with the dead writer, or dropped from a live writer's pool) and so do the dead
    engine's, and the Hub's link alone keeps the segment, until the controller stops: the
    sweep counts the Hub as alive, and no copy will come to release it.

    A link that is the only name of its segment (no writer name: the writer gave it up; no
    other reader's link: no live task maps it), that the Hub does not map (no stored record or
    request in hand reads through it) and that stayed so for ``grace`` seconds (a copy still on
    its way, the Hub reading seconds behind in a burst, finds it) is due: :meth:`due`. No
    sockets, no files: the caller lists the names and removes the links.
    """

    def __init__(self, grace: float = LONE_HUB_LINK_GRACE) -> None:
        self.grace = check_lone_hub_link_grace(grace)
        self._since: dict[str, float] = {}  # lone Hub link -> when first seen alone

    def due(self, prefix: str, names: Iterable[str], mapped: set[str], now: float) -> list[str]:
        """Of ``names`` (a listing of the segment folder), the Hub links under ``prefix`` seen
        alone and unmapped (``mapped``: the names the Hub reads through now) since at least
        ``grace`` seconds before ``now``. Links no longer alone are forgotten."""
        names_of: dict[tuple[int, str], list[LinkName]] = {}
        hub_link: dict[tuple[int, str], str] = {}
        for name in names:
            parsed = parse_link(name)
            if parsed is None or parsed.prefix != prefix:
                continue
            key = (parsed.writer, parsed.token)
            names_of.setdefault(key, []).append(parsed)
            if parsed.reader == HUB:
                hub_link[key] = name
        lone = {
            name for key, name in hub_link.items() if len(names_of[key]) == 1 and name not in mapped
        }
        self._since = {name: self._since.get(name, now) for name in lone}
        return sorted(name for name, since in self._since.items() if now - since >= self.grace)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
