"""The connection files: the one definition of what the controller writes and everyone reads.

The controller writes ``corral-client.json`` (for clients, the dashboard, ``corral list``) and
``corral-engine.json`` (for engines) into the cluster folder ``<cluster_dir>/<cluster_id>/``,
mode 0600 (docs/wire-flows.md, "Cluster folder and connection files"). Holding either file
means being able to run code on every engine, so nothing here logs a file's content.

This module holds the file names, the folder resolution, and one frozen dataclass per file with
its JSON mapping, so a field is spelled in one place. Readers accept fields they do not know
(a newer controller may add some) and raise :class:`corral.errors.ConnectionError` naming the
file and the field when one they need is missing or malformed. Nothing here reads the
environment: the entry points (the CLI, ``Cluster``, ``Client``) pass ``os.environ`` to
:func:`cluster_dir_from` and the folder they resolve to everything below them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import orjson

from corral.errors import ConnectionError

if TYPE_CHECKING:  # imported when a file is read: corral.security loads zmq.auth (slow)
    from corral.security import CurveKeys

__all__ = [
    "CLIENT_FILE",
    "CLUSTER_DIR_VARIABLE",
    "DASHBOARD_FILE",
    "DEFAULT_CLUSTER_DIR",
    "DEFAULT_CLUSTER_ID",
    "ENGINE_FILE",
    "RESTORE_FILE",
    "STORE_FILE",
    "ClientConnection",
    "CommonFields",
    "EngineConnection",
    "cluster_dir_from",
    "cluster_folder",
    "read_json_object",
    "write_private_json",
]

CLIENT_FILE = "corral-client.json"
ENGINE_FILE = "corral-engine.json"
RESTORE_FILE = "controller-restore.json"  # key and ports for --restore; kept after a clean stop
DASHBOARD_FILE = "dashboard.json"  # the dashboard's {url, port, pid}, while it runs
STORE_FILE = "tasks.db"  # the SQLite result store
DEFAULT_CLUSTER_ID = "default"
DEFAULT_CLUSTER_DIR = "~/.corral"
CLUSTER_DIR_VARIABLE = "CORRAL_DIR"  # read by the entry points only, through cluster_dir_from

# client channel -> the field holding its port
CLIENT_PORTS = {
    "hub": "registration",
    "notification": "notification",
    "mux": "mux",
    "control": "control",
    "task": "task",
    "iopub": "iopub",
}
ENGINE_PORTS = (
    "mux_engine",
    "control_engine",
    "task_engine",
    "iopub_engine",
    "hb_ping",
    "hb_pong",
    "copies_engine",
)


def cluster_dir_from(environ: Mapping[str, str]) -> Path:
    """The folder holding clusters: ``$CORRAL_DIR`` in ``environ``, else ``~/.corral``."""
    return Path(environ.get(CLUSTER_DIR_VARIABLE) or DEFAULT_CLUSTER_DIR).expanduser()


def cluster_folder(
    cluster_dir: str | os.PathLike[str] | None, cluster_id: str | None = None
) -> Path:
    """``<cluster_dir>/<cluster_id>``; ``~/.corral`` and ``default`` when not given."""
    base = Path(cluster_dir if cluster_dir is not None else DEFAULT_CLUSTER_DIR).expanduser()
    return base / (cluster_id or DEFAULT_CLUSTER_ID)


def write_private_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON readable by the owner only (0600), created that way and renamed into place,
    so no reader sees a 0644 window or half a file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if it is missing, unreadable or not an object:
    for inspecting folders (``corral list``, ``--restore``), where a file half-gone is normal."""
    try:
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _load(path: Path, what: str) -> object:
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConnectionError(
            f"no {what} at {path}: no cluster is running there. Start one with "
            "`corral start` (or `with corral.Cluster(n=4) as rc:` in Python), or pass "
            "the connection file, cluster id or cluster folder of a running one"
        ) from None
    except OSError as err:
        raise ConnectionError(f"cannot read the {what} {path}: {err.strerror}") from None
    except orjson.JSONDecodeError as err:
        raise ConnectionError(f"the {what} {path} is not valid JSON: {err}") from None


class _Fields:
    """Typed access to one decoded file, each error naming the file and the field."""

    def __init__(self, info: object, where: str) -> None:
        if not isinstance(info, Mapping):
            raise ConnectionError(f"{where} is not a JSON object")
        self.info: Mapping[str, Any] = info
        self.where = where

    def _get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = self.info.get(name, default)
        if value is _REQUIRED:
            raise ConnectionError(f"{self.where} lacks the field {name!r}")
        if value is not None and not isinstance(value, kind):
            raise ConnectionError(f"{self.where}: field {name!r} has the wrong type: {value!r}")
        return value

    def port(self, name: str) -> int:
        value = self._get(name, int, _REQUIRED)
        if value is None or isinstance(value, bool) or not 0 < value < 65536:
            raise ConnectionError(f"{self.where}: field {name!r} is not a port: {value!r}")
        return int(value)

    def optional_port(self, name: str) -> int | None:
        return None if self.info.get(name) is None else self.port(name)

    def text(self, name: str, default: str) -> str:
        value = self._get(name, str, default)
        return default if value is None else str(value)

    def optional_text(self, name: str) -> str | None:
        value = self._get(name, str, None)
        return None if value is None else str(value)

    def key(self) -> bytes:
        value = self._get("key", (str, bytes), _REQUIRED)
        if value is None:
            raise ConnectionError(f"{self.where}: field 'key' has the wrong type: None")
        try:
            return value.encode("ascii") if isinstance(value, str) else bytes(value)
        except UnicodeEncodeError:
            raise ConnectionError(f"{self.where}: the key is not ASCII") from None

    def section(self, name: str) -> dict[str, Any] | None:
        value = self._get(name, dict, None)
        return None if value is None else dict(value)

    def pid(self) -> int | None:
        value = self._get("controller_pid", int, None)
        return None if value is None or isinstance(value, bool) else int(value)

    def number(self, name: str) -> float | None:
        value = self._get(name, (int, float), None)
        return None if value is None else float(value)

    def curve(self) -> CurveKeys | None:
        from corral.security import CurveKeys

        try:
            return CurveKeys.from_connection(self.info)
        except ConnectionError as err:
            raise ConnectionError(f"{self.where}: {err}") from None


_REQUIRED: Any = object()


class CommonFields(TypedDict):
    """The fields both files carry, as keyword arguments for either class."""

    key: bytes
    registration: int
    cluster_id: str
    signature_scheme: str
    transport: str
    ip: str
    location: str | None
    controller_pid: int | None
    curve: CurveKeys | None
    shm: dict[str, Any] | None


@dataclass(frozen=True, kw_only=True)
class _Common:
    """The fields both files carry."""

    key: bytes  # the signing key; empty only for an --insecure cluster
    registration: int  # the Hub's registration port
    cluster_id: str = DEFAULT_CLUSTER_ID
    signature_scheme: str = "hmac-sha256"
    transport: str = "tcp"
    ip: str = "127.0.0.1"  # the address others reach, never a wildcard
    location: str | None = None  # the controller's host name
    controller_pid: int | None = None
    curve: CurveKeys | None = None  # set when the controller runs with --curve
    shm: dict[str, Any] | None = None  # protocol.shm.Settings.to_json(), when the fast path is on

    def url(self, port: int) -> str:
        """The address of one of this file's ports."""
        return f"{self.transport}://{self.ip}:{port}"

    @property
    def registration_url(self) -> str:
        return self.url(self.registration)

    def _common_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "cluster_id": self.cluster_id,
            "key": self.key.decode("ascii"),
            "signature_scheme": self.signature_scheme,
            "transport": self.transport,
            "ip": self.ip,
            "registration": self.registration,
        }
        if self.location is not None:
            data["location"] = self.location
        if self.controller_pid is not None:
            data["controller_pid"] = self.controller_pid
        if self.curve is not None:
            data["curve"] = self.curve.to_connection()
        if self.shm is not None:
            data["shm"] = self.shm
        return data

    def common_fields(self) -> CommonFields:
        """This file's common fields, to write the other file with the same ones."""
        return CommonFields(
            key=self.key,
            registration=self.registration,
            cluster_id=self.cluster_id,
            signature_scheme=self.signature_scheme,
            transport=self.transport,
            ip=self.ip,
            location=self.location,
            controller_pid=self.controller_pid,
            curve=self.curve,
            shm=self.shm,
        )

    @staticmethod
    def _parse_common(fields: _Fields) -> CommonFields:
        return CommonFields(
            key=fields.key(),
            registration=fields.port("registration"),
            cluster_id=fields.text("cluster_id", DEFAULT_CLUSTER_ID),
            signature_scheme=fields.text("signature_scheme", "hmac-sha256"),
            transport=fields.text("transport", "tcp"),
            ip=fields.text("ip", "127.0.0.1"),
            location=fields.optional_text("location"),
            controller_pid=fields.pid(),
            curve=fields.curve(),
            shm=fields.section("shm"),
        )


@dataclass(frozen=True, kw_only=True)
class ClientConnection(_Common):
    """``corral-client.json``: what a client (and the dashboard, and ``corral list``) needs."""

    notification: int
    mux: int
    control: int
    task: int | None  # None: a controller run without its task scheduler
    iopub: int
    store: dict[str, Any] | None = None  # the store's kind and limits, as people read them
    sqlite_store: str | None = None  # the SQLite file, for readers paging history without the Hub
    dashboard: str | None = None  # the dashboard's URL, added by the dashboard while it runs

    def addresses(self) -> dict[str, str]:
        """URL of each client channel: ``hub``, ``notification``, ``mux``, ``control``,
        ``task``, ``iopub``."""
        ports = {channel: getattr(self, name) for channel, name in CLIENT_PORTS.items()}
        return {channel: self.url(port) for channel, port in ports.items() if port is not None}

    def to_json(self) -> dict[str, Any]:
        data = self._common_json()
        data.update({name: getattr(self, name) for name in CLIENT_PORTS.values()})
        for name in ("store", "sqlite_store", "dashboard"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        return data

    @classmethod
    def from_json(cls, info: object, where: str = "the connection info") -> ClientConnection:
        """Parse a decoded file; ConnectionError naming what is missing or malformed."""
        fields = _Fields(info, where)
        return cls(
            **cls._parse_common(fields),
            notification=fields.port("notification"),
            mux=fields.port("mux"),
            control=fields.port("control"),
            task=fields.optional_port("task"),
            iopub=fields.port("iopub"),
            store=fields.section("store"),
            sqlite_store=fields.optional_text("sqlite_store"),
            dashboard=fields.optional_text("dashboard"),
        )

    @classmethod
    def read(cls, path: Path) -> ClientConnection:
        return cls.from_json(_load(path, "connection file"), f"the connection file {path}")


@dataclass(frozen=True, kw_only=True)
class EngineConnection(_Common):
    """``corral-engine.json``. An engine needs only the key and the registration port (its
    registration reply carries every other address), so the engine-facing ports are optional
    here; the controller always writes them."""

    mux_engine: int | None = None
    control_engine: int | None = None
    task_engine: int | None = None
    iopub_engine: int | None = None
    hb_ping: int | None = None
    hb_pong: int | None = None
    copies_engine: int | None = None  # the Hub's copies of the engines' direct requests
    heartbeat_period: float | None = None  # seconds

    def to_json(self) -> dict[str, Any]:
        data = self._common_json()
        for name in (*ENGINE_PORTS, "heartbeat_period"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        return data

    @classmethod
    def from_json(cls, info: object, where: str = "the connection info") -> EngineConnection:
        """Parse a decoded file; ConnectionError naming what is missing or malformed."""
        fields = _Fields(info, where)
        return cls(
            **cls._parse_common(fields),
            mux_engine=fields.optional_port("mux_engine"),
            control_engine=fields.optional_port("control_engine"),
            task_engine=fields.optional_port("task_engine"),
            iopub_engine=fields.optional_port("iopub_engine"),
            hb_ping=fields.optional_port("hb_ping"),
            hb_pong=fields.optional_port("hb_pong"),
            copies_engine=fields.optional_port("copies_engine"),
            heartbeat_period=fields.number("heartbeat_period"),
        )

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> EngineConnection:
        path = Path(path)
        return cls.from_json(
            _load(path, "engine connection file"), f"the engine connection file {path}"
        )
