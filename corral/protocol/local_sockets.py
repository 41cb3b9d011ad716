"""Unix sockets for the peers on the controller's host: which address a peer connects to.

The controller binds its MUX and control queues (and the scheduler its task queue) on TCP, as
always, and also on Unix sockets (``ipc://``) in a folder only its user can enter
(``<cluster folder>/sockets``, mode 0700 inside the 0700 cluster folder, or where that path is
too long, one in a 0700 folder of the user's in the temporary folder: :func:`socket_folder`).
The connection files offer them in one section, ``local_sockets``: ``{host, <port field>:
"ipc://...", ...}``. A peer that is on the same host (same boot, same mount namespace, same
user: :func:`host_identity`) and finds the offer's folder connects to those; any other peer
(another host, a container with its own mounts) keeps the TCP address, with Curve when the
cluster has it.

Why: a hop through loopback TCP costs the kernel more than one through a Unix socket (the
whole TCP stack runs, acknowledgements included), and a round trip crosses four such sockets.
Measured on two cores (``bench/bench_trace.py``, bench/README.md "Round ten"): each of the two
MUX stages of a direct no-op round trip went from 85-170 us to 70-90.

This module decides only; it opens no socket. The controller (``controller/app.py``) and the
scheduler (``controller/scheduler_shell.py``) bind; the client (``client/client.py``) and the
engine (``engine/io_shell.py``) call :func:`prefer_local` with the TCP addresses they would use.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FOLDER_NAME",
    "MAX_SOCKET_PATH",
    "LocalSockets",
    "host_identity",
    "prefer_local",
    "socket_folder",
]

FOLDER_NAME = "sockets"
MAX_SOCKET_PATH = 100  # bytes; Linux allows 107 in sun_path, macOS 103
# the channel of each side and the connection-file field naming its socket
CLIENT_FIELDS = {"mux": "mux", "control": "control", "task": "task"}
ENGINE_FIELDS = {"mux": "mux_engine", "control": "control_engine", "task": "task_engine"}


def host_identity() -> str:
    """Equal in two processes exactly when a Unix socket one binds is a file the other can
    reach: the same boot of the same kernel, the same mount namespace, the same user (the
    folder is 0700)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = os.uname().nodename
    try:
        mounts = os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        mounts = 0
    seed = f"{boot}:{mounts}:{os.getuid()}"
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


def socket_folder(cluster_path: Path, temporary: str) -> Path | None:
    """Where the controller binds its Unix sockets: ``<cluster folder>/sockets``, or where that
    path is too long for a Unix socket (a deep ``CORRAL_DIR``, a test's folder), a folder named
    for the cluster folder in ``<temporary>/corral-<uid>/``; the same for every run of one
    cluster, so engines that outlive their controller find its successor (``--restore``) where
    they left it. None when both are too long: then everyone uses TCP."""
    cluster_path = Path(os.path.abspath(cluster_path))
    digest = hashlib.sha256(os.fsencode(cluster_path)).hexdigest()[:16]
    longest = max(len(field) for field in ENGINE_FIELDS.values())
    for folder in (
        cluster_path / FOLDER_NAME,
        Path(temporary) / f"corral-{os.getuid()}" / digest,
    ):
        if len(os.fsencode(folder)) + 1 + longest <= MAX_SOCKET_PATH:
            return folder
    return None


@dataclass(frozen=True)
class LocalSockets:
    """The ``local_sockets`` section of the connection files: the controller's host identity
    and, for each port field it covers, the ``ipc://`` address bound beside the TCP port."""

    host: str
    addresses: dict[str, str]

    def to_json(self) -> dict[str, str]:
        return {"host": self.host, **self.addresses}

    @classmethod
    def from_json(cls, section: Mapping[str, Any] | None) -> LocalSockets | None:
        """The offer in a file's section; None for no section or a malformed one (a peer then
        uses TCP, as with a controller that offers none)."""
        if not section or not isinstance(section.get("host"), str):
            return None
        addresses = {
            name: value
            for name, value in section.items()
            if name != "host" and isinstance(value, str) and value.startswith("ipc://")
        }
        return cls(section["host"], addresses) if addresses else None


def prefer_local(
    addresses: Mapping[str, str],
    fields: Mapping[str, str],
    offer: LocalSockets | None,
    here: str,
) -> dict[str, str]:
    """``addresses`` (channel -> TCP URL) with the offer's Unix socket in place of each channel
    it covers (``fields``: channel -> port field), when this process is on the controller's
    host (``here`` = its :func:`host_identity`) and the socket's folder is there; otherwise
    ``addresses`` as they are."""
    chosen = dict(addresses)
    if offer is None or offer.host != here:
        return chosen
    for channel, field in fields.items():
        local = offer.addresses.get(field)
        if channel in chosen and local is not None and _folder_exists(local):
            chosen[channel] = local
    return chosen


def _folder_exists(address: str) -> bool:
    return os.path.isdir(os.path.dirname(address[len("ipc://") :]))
