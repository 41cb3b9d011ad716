"""The connection files: folder resolution, typed reading and writing, clear errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.errors import ConnectionError
from corral.protocol.connection_files import (
    CLIENT_FILE,
    ClientConnection,
    EngineConnection,
    cluster_dir_from,
    cluster_folder,
    read_json_object,
    write_private_json,
)
from corral.security import CurveKeys

PORTS = {"registration": 5001, "notification": 5002, "mux": 5003, "control": 5004}
CLIENT = {"key": "k", **PORTS, "task": 5005, "iopub": 5006, "ip": "10.0.0.1", "extra": 1}


def test_folders_resolve_without_reading_the_environment(tmp_path: Path) -> None:
    assert cluster_dir_from({"CORRAL_DIR": str(tmp_path)}) == tmp_path
    assert cluster_dir_from({}) == Path.home() / ".corral"
    assert cluster_dir_from({"CORRAL_DIR": ""}) == Path.home() / ".corral"
    assert cluster_folder(tmp_path) == tmp_path / "default"
    assert cluster_folder(str(tmp_path), "c1") == tmp_path / "c1"
    assert cluster_folder(None, "c2") == Path.home() / ".corral" / "c2"


def test_client_file_round_trips_and_keeps_every_field(tmp_path: Path) -> None:
    keys = CurveKeys.from_connection({"curve": CurveKeys.generate().to_connection()})
    written = ClientConnection(
        key=b"secret",
        registration=1,
        notification=2,
        mux=3,
        control=4,
        task=None,
        iopub=6,
        cluster_id="c",
        location="host",
        controller_pid=42,
        curve=keys,
        shm={"prefix": "p", "host": "h", "threshold": 10},
        store={"db": "sqlite"},
        sqlite_store="/x/tasks.db",
    )
    path = tmp_path / CLIENT_FILE
    write_private_json(path, written.to_json())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    read = ClientConnection.read(path)
    assert read == written
    assert read.curve == keys
    assert read.addresses()["hub"] == "tcp://127.0.0.1:1"
    assert "task" not in read.addresses()  # no scheduler: no task channel
    assert not (tmp_path / (CLIENT_FILE + ".tmp")).exists()


def test_client_file_addresses_and_unknown_fields() -> None:
    info = ClientConnection.from_json(CLIENT)
    assert info.key == b"k"
    assert info.addresses() == {
        "hub": "tcp://10.0.0.1:5001",
        "notification": "tcp://10.0.0.1:5002",
        "mux": "tcp://10.0.0.1:5003",
        "control": "tcp://10.0.0.1:5004",
        "task": "tcp://10.0.0.1:5005",
        "iopub": "tcp://10.0.0.1:5006",
    }


def test_null_fields_take_their_defaults() -> None:
    info = EngineConnection.from_json({"key": "k", "registration": 1, "ip": None})
    assert info.registration_url == "tcp://127.0.0.1:1"


def test_engine_file_needs_only_key_and_registration() -> None:
    info = EngineConnection.from_json(
        {"key": "k", "registration": 5555, "transport": "tcp", "ip": "10.0.0.1", "extra": 1}
    )
    assert info.key == b"k"
    assert info.registration_url == "tcp://10.0.0.1:5555"
    assert info.signature_scheme == "hmac-sha256"
    assert info.curve is None and info.hb_ping is None
    keys = CurveKeys.generate()
    with_curve = {"key": "k", "registration": 5555, "curve": keys.to_connection()}
    assert EngineConnection.from_json(with_curve).curve == CurveKeys.from_connection(with_curve)


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ([], "is not a JSON object"),
        ({"registration": 1}, "lacks the field 'key'"),
        ({"key": "k"}, "lacks the field 'registration'"),
        ({"key": "k", "registration": "x"}, "'registration' has the wrong type"),
        ({"key": "k", "registration": None}, "'registration' is not a port"),
        ({"key": None, "registration": 1}, "'key' has the wrong type"),
        ({"key": "k", "registration": 70000}, "'registration' is not a port"),
        ({"key": "k", "registration": True}, "'registration' is not a port"),
        ({"key": 5, "registration": 1}, "'key' has the wrong type"),
        ({"key": "é", "registration": 1}, "the key is not ASCII"),
        ({"key": "k", "registration": 1, "curve": "x"}, "'curve' must be an object"),
        ({"key": "k", "registration": 1, "shm": 3}, "'shm' has the wrong type"),
    ],
)
def test_bad_engine_info_is_a_clear_error(info: object, message: str) -> None:
    with pytest.raises(ConnectionError, match=message):
        EngineConnection.from_json(info, "the file f")


def test_client_info_names_the_missing_port() -> None:
    with pytest.raises(ConnectionError, match="lacks the field 'iopub'"):
        ClientConnection.from_json({k: v for k, v in CLIENT.items() if k != "iopub"})


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match="no cluster is running there"):
        ClientConnection.read(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConnectionError, match="not valid JSON"):
        EngineConnection.read(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ConnectionError, match="JSON object"):
        EngineConnection.read(tmp_path / "list.json")
    assert read_json_object(tmp_path / "list.json") is None
    assert read_json_object(tmp_path / "bad.json") is None
    assert read_json_object(tmp_path / "missing.json") is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
FIELDS = st.sampled_from(
    ["key", "registration", "notification", "mux", "control", "task", "iopub", "ip", "curve",
     "shm", "store", "cluster_id", "controller_pid", "heartbeat_period", "hb_ping"]
)  # fmt: skip


@given(st.dictionaries(FIELDS, JSON) | JSON)
def test_garbage_in_gives_a_connection_error(info: object) -> None:
    for kind in (ClientConnection, EngineConnection):
        try:
            kind.from_json(info)
        except ConnectionError:
            pass
