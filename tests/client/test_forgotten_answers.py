"""The forgotten answers a client keeps per engine (corral/client/forgotten_answers.py), no
sockets; with the records that forget them, in test_lost_report.py."""

from __future__ import annotations

from corral.client.forgotten_answers import ForgottenAnswers, answering_engine, is_balanced
from corral.client.metadata import Metadata


def _add(table: ForgottenAnswers, engine: str, count: int, start: int = 0) -> list[str]:
    msg_ids = [f"{engine}-{i}" for i in range(start, start + count)]
    for msg_id in msg_ids:
        table.add(msg_id, engine, ("entry", msg_id))
    table.bound()
    return msg_ids


def test_each_engine_keeps_its_newest_answers() -> None:
    table = ForgottenAnswers(per_engine=3, in_all=100)
    _add(table, "a", 2)
    kept = _add(table, "b", 5)
    assert [msg_id for msg_id, _ in table.of("b")] == kept[2:]
    assert [entry for _, entry in table.of("a")] == [("entry", "a-0"), ("entry", "a-1")]
    assert table.of("nobody") == [] and len(table) == 5


def test_in_all_the_engines_that_answered_longest_ago_lose_theirs_first() -> None:
    table = ForgottenAnswers(per_engine=4, in_all=6)
    _add(table, "a", 3)
    _add(table, "b", 3)
    _add(table, "a", 1, start=3)  # a answered last: b loses its answers
    assert len(table.of("a")) == 4 and table.of("b") == [] and len(table) == 4
    _add(table, "c", 3)
    assert table.of("a") == [] and len(table.of("c")) == 3
    table.drop("c")
    assert len(table) == 0
    _add(table, "d", 6)  # the count went down with the drop
    assert len(table.of("d")) == 4 and len(table) == 4


def test_one_engine_alone_keeps_its_answers_past_the_bound_in_all() -> None:
    table = ForgottenAnswers(per_engine=10, in_all=4)
    _add(table, "a", 6)
    assert len(table.of("a")) == 6  # not emptied: the bound in all takes other engines'


def test_the_engine_of_a_full_entry_is_that_of_an_answered_request() -> None:
    """(Compact entries, direct and load-balanced: test_lost_report.py.)"""
    answered = Metadata(msg_id="m", engine_uuid="e", completed="2026-01-01T00:00:00+00:00")
    assert answering_engine(answered) == "e" and not is_balanced(answered)
    assert answering_engine(Metadata(msg_id="m", engine_uuid="e")) is None  # no completion
    assert answering_engine(Metadata(msg_id="m")) is None
