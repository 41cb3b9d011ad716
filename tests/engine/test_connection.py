"""Finding and reading the engine connection file."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.engine.connection import EngineConnectionInfo, engine_connection_file
from corral.errors import ConnectionError


def test_file_location_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CORRAL_DIR", str(tmp_path))
    assert engine_connection_file() == tmp_path / "default" / "corral-engine.json"
    assert engine_connection_file("c1") == tmp_path / "c1" / "corral-engine.json"
    assert engine_connection_file("c1", "/x") == Path("/x/c1/corral-engine.json")
    monkeypatch.delenv("CORRAL_DIR")
    assert engine_connection_file("c2") == Path.home() / ".corral" / "c2" / "corral-engine.json"


def test_info_from_dict() -> None:
    info = EngineConnectionInfo.from_dict(
        {"key": "k", "registration": 5555, "transport": "tcp", "ip": "10.0.0.1", "extra": 1}
    )
    assert info.key == b"k"
    assert info.registration == "tcp://10.0.0.1:5555"
    assert info.signature_scheme == "hmac-sha256"


@pytest.mark.parametrize(
    ("info", "message"),
    [
        ({"registration": 1}, "lacks the field 'key'"),
        ({"key": "k"}, "lacks the field 'registration'"),
        ({"key": "k", "registration": "x"}, "is not a port"),
        ({"key": 5, "registration": 1}, "key must be a string"),
    ],
)
def test_bad_info_is_a_clear_error(info: dict[str, object], message: str) -> None:
    with pytest.raises(ConnectionError, match=message):
        EngineConnectionInfo.from_dict(info)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match="cannot read"):
        EngineConnectionInfo.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConnectionError, match="not valid JSON"):
        EngineConnectionInfo.from_file(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ConnectionError, match="JSON object"):
        EngineConnectionInfo.from_file(tmp_path / "list.json")
