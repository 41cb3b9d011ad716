"""The Hub's actions applied to a store (corral/controller/hub_actions.py): a record's write
alone (the shell's way for the usual copy) does what applying it among others does."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from corral.controller.hub_actions import (
    AddRecord,
    DropRecords,
    Send,
    UpdateRecord,
    apply_record_write,
    apply_writes,
)
from corral.controller.store import MemoryStore


def test_a_record_write_alone_is_applied_as_among_others() -> None:
    alone, among = MemoryStore(), MemoryStore()
    writes = [
        AddRecord("a", {"msg_id": "a", "status": "pending"}),
        UpdateRecord("a", {"status": "ok", "stdout": "x"}),
    ]
    for action in writes:
        assert apply_record_write(alone, action)
    sent = Send("notification", "x", {})
    assert apply_writes(among, [*writes, sent], lambda msg_ids: None) == [sent]
    assert alone.get_records(["a"]) == among.get_records(["a"]) != {}


def test_other_actions_are_left_alone() -> None:
    store = MemoryStore()
    store.add_record("a", {"status": "ok"})
    for action in (DropRecords(("a",)), Send("notification", "x", {})):
        assert not apply_record_write(store, action)
    assert store.get_history() == ["a"]


def test_a_refused_write_is_logged_and_costs_itself(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    with caplog.at_level(logging.ERROR, logger="corral.hub"):
        assert apply_record_write(store, AddRecord("a", {"engine_id": "not a number"}))
        assert apply_record_write(store, AddRecord("b", {"status": "ok"}))
    assert "AddRecord failed" in caplog.text
    assert store.get_history() == ["b"]


def test_record_writes_are_equal_by_value_and_unhashable() -> None:
    """The Hub's two per-task actions, their ``__init__`` written out (compiled, a dataclass's
    own is interpreted), still compare, hash and show as the dataclasses they are."""
    texts = (b"{}", b"{}", b"{}", b"{}")
    assert AddRecord("a", {"x": 1}) == AddRecord("a", {"x": 1})
    assert AddRecord("a", {"x": 1}, texts) != AddRecord("a", {"x": 1})
    assert AddRecord("a", {"x": 1}) != UpdateRecord("a", {"x": 1})
    assert UpdateRecord("a", {"x": 1}, texts) == UpdateRecord("a", {"x": 1}, texts)
    assert UpdateRecord("a", {"x": 1}) != UpdateRecord("b", {"x": 1})
    assert "UpdateRecord(msg_id='a'" in repr(UpdateRecord("a", {}))
    with pytest.raises(TypeError):
        hash(AddRecord("a", {}))
    assert dataclasses.fields(UpdateRecord)[2].name == "json_texts"
    assert dataclasses.replace(AddRecord("a", {}), msg_id="b") == AddRecord("b", {})
