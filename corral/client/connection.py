"""Finding and reading a cluster's client connection file (``corral-client.json``).

The controller writes it, mode 0600, into ``<cluster_dir>/<cluster_id>/`` (docs/wire-flows.md):
the signing key and one port per channel. Holding it means being able to run code on every
engine, which is why nothing here logs its content.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from corral.errors import ConnectionError

__all__ = [
    "CLIENT_FILE",
    "DEFAULT_TIMEOUT",
    "check_connection_info",
    "client_addresses",
    "find_connection_file",
    "read_connection_file",
]

CLIENT_FILE = "corral-client.json"
DEFAULT_TIMEOUT = 10.0
PORT_KEYS = {  # client channel -> the port's key in the file
    "hub": "registration",
    "notification": "notification",
    "mux": "mux",
    "control": "control",
    "task": "task",
    "iopub": "iopub",
}


def find_connection_file(
    connection_file: str | os.PathLike[str] | None = None,
    cluster_id: str | None = None,
    cluster_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """The file given, or
    ``<cluster_dir or $CORRAL_DIR or ~/.corral>/<cluster_id or 'default'>/corral-client.json``."""
    if connection_file is not None:
        return Path(connection_file).expanduser()
    root = Path(cluster_dir or os.environ.get("CORRAL_DIR") or Path.home() / ".corral")
    return root.expanduser() / (cluster_id or "default") / CLIENT_FILE


def read_connection_file(path: Path) -> dict[str, Any]:
    """The file's fields; ConnectionError saying how to start a cluster if there is none."""
    try:
        info = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConnectionError(
            f"no connection file at {path}: no cluster is running there. Start one with "
            "`corral start` (or `with corral.Cluster(n=4) as rc:` in Python), or pass "
            "connection_file=, cluster_id= or cluster_dir= to find a running one"
        ) from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConnectionError(f"cannot read the connection file {path}: {exc}") from exc
    return check_connection_info(info, f"the connection file {path}")


def check_connection_info(info: object, where: str) -> dict[str, Any]:
    """``info`` if it is a dict with the key and every port; ConnectionError saying what is
    missing otherwise."""
    if not isinstance(info, dict):
        raise ConnectionError(f"{where} is not a JSON object")
    missing = [key for key in ("key", *PORT_KEYS.values()) if key not in info]
    if missing:
        raise ConnectionError(f"{where} lacks {', '.join(missing)}")
    return info


def client_addresses(info: dict[str, Any]) -> dict[str, str]:
    """URL of each client channel (``hub``, ``notification``, ``mux``, ``control``, ``task``,
    ``iopub``) from the file's transport, ip and ports."""
    transport, ip = info.get("transport", "tcp"), info.get("ip", "127.0.0.1")
    return {channel: f"{transport}://{ip}:{info[key]}" for channel, key in PORT_KEYS.items()}
