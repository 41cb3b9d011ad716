"""The Hub's record of recent activity: counts and numbered completions."""

from __future__ import annotations

from corral.controller.activity import Activity


def complete(activity: Activity, n: int, status: str = "ok") -> None:
    for i in range(n):
        activity.complete(f"m{activity.seq + 1}", i % 2, status, "s", "c")


def test_counts_and_completions_since_a_sequence_number() -> None:
    activity = Activity()
    activity.submit()
    activity.submit()
    complete(activity, 1)
    complete(activity, 1, "error")
    answer = activity.since(0)
    assert answer["counts"] == {"ok": 1, "error": 1}
    assert answer["submitted"] == 2 and answer["seq"] == 2 and answer["lost"] == 0
    assert [item[0] for item in answer["recent"]] == [1, 2]
    assert activity.since(1)["recent"] == [[2, "m2", 0, "error", "s", "c"]]
    assert activity.since(2)["recent"] == []


def test_a_reader_far_behind_learns_how_many_it_missed() -> None:
    activity = Activity(capacity=10)
    complete(activity, 25)
    answer = activity.since(0)
    assert [item[0] for item in answer["recent"]] == list(range(16, 26))
    assert answer["lost"] == 15
    limited = activity.since(20, limit=3)
    assert [item[0] for item in limited["recent"]] == [23, 24, 25] and limited["lost"] == 2


def test_a_sequence_number_out_of_range_is_clamped() -> None:
    activity = Activity()
    complete(activity, 3)
    assert activity.since(99)["recent"] == []
    assert len(activity.since(-5)["recent"]) == 3
