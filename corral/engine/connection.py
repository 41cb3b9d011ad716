"""Where an engine finds its controller: the engine connection file (docs/wire-flows.md).

An engine needs only the registration address, the signing key and, for a ``--curve`` cluster,
the curve keys; the registration reply carries every other address. The file's other fields
are read when present and ignored otherwise, so an engine keeps working when the controller
adds fields. A missing or broken file raises corral.errors.ConnectionError: the engine cannot
reach its controller without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from corral.errors import ConnectionError
from corral.security import CurveKeys

ENGINE_FILE_NAME = "corral-engine.json"
DEFAULT_CLUSTER_ID = "default"


@dataclass(frozen=True)
class EngineConnectionInfo:
    """What the engine reads from its connection file."""

    key: bytes
    registration: str
    signature_scheme: str = "hmac-sha256"
    cluster_id: str = DEFAULT_CLUSTER_ID
    curve: CurveKeys | None = None  # set when the controller runs with --curve

    @classmethod
    def from_dict(cls, info: Mapping[str, Any]) -> EngineConnectionInfo:
        """Parse the fields of ``corral-engine.json``; raises ConnectionError if one lacks."""
        try:
            key = info["key"]
            port = int(info["registration"])
        except KeyError as missing:
            raise ConnectionError(f"connection info lacks the field {missing}") from None
        except (TypeError, ValueError):
            raise ConnectionError(
                f"connection info: registration port {info.get('registration')!r} is not a port"
            ) from None
        if not isinstance(key, str | bytes):
            raise ConnectionError("connection info: key must be a string")
        transport = str(info.get("transport", "tcp"))
        ip = str(info.get("ip", "127.0.0.1"))
        return cls(
            key=key.encode("ascii") if isinstance(key, str) else key,
            registration=f"{transport}://{ip}:{port}",
            signature_scheme=str(info.get("signature_scheme", "hmac-sha256")),
            cluster_id=str(info.get("cluster_id", DEFAULT_CLUSTER_ID)),
            curve=CurveKeys.from_connection(info),
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> EngineConnectionInfo:
        try:
            data = orjson.loads(Path(path).read_bytes())
        except OSError as err:
            raise ConnectionError(
                f"cannot read the engine connection file {path}: {err.strerror}; "
                "is the controller running, and is this the right cluster folder?"
            ) from None
        except orjson.JSONDecodeError as err:
            raise ConnectionError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ConnectionError(f"{path} does not hold a JSON object")
        return cls.from_dict(data)


def engine_connection_file(cluster_id: str | None = None, cluster_dir: str | None = None) -> Path:
    """``<cluster_dir>/<cluster_id>/corral-engine.json``.

    ``cluster_dir`` defaults to ``$CORRAL_DIR`` or ``~/.corral``; ``cluster_id`` to ``default``.
    """
    base = cluster_dir or os.environ.get("CORRAL_DIR") or Path.home() / ".corral"
    return Path(base).expanduser() / (cluster_id or DEFAULT_CLUSTER_ID) / ENGINE_FILE_NAME
