"""purge_local_results: a client forgets finished requests (results, metadata, history, its
views' history) so that its memory stays flat; pending ones and held AsyncResults are kept."""

from __future__ import annotations

from typing import Any

import pytest

from tests.polling import until


def _nap(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def test_finished_requests_are_forgotten_and_pending_ones_kept(rc: Any) -> None:
    view = rc.load_balanced_view()
    done = view.map_async(_nap, [0.0] * 20, chunksize=1)
    assert done.get(timeout=60) == [0.0] * 20
    running = rc[0].apply_async(_nap, 1.0)
    with pytest.raises(RuntimeError, match="outstanding"):  # as ipyparallel: nothing is purged
        rc.purge_local_results("all")
    rc.purge_local_results(done)
    records = rc._records
    for msg_id in done.msg_ids:
        assert msg_id not in records.results and msg_id not in records.metadata
        assert msg_id not in records.taken
        assert msg_id not in rc.history and msg_id not in view.history
    assert running.msg_ids[0] in rc.history
    assert done.get() == [0.0] * 20  # the AsyncResult keeps its values
    assert running.get(timeout=60) == 1.0
    rc.purge_local_results([running])
    assert running.msg_ids[0] not in records.results


def _client_tables(rc: Any) -> dict[str, int]:
    """The size of every table the client keeps per request."""
    records = rc._records
    return {
        "futures": len(records.futures),
        "pending": len(records.pending),
        "results": len(records.results),
        "metadata": len(records.metadata),
        "taken": len(records.taken),
        "history": len(records.history),
        "outstanding": len(records.outstanding),
        "silent": len(records._silent),
        "trackers": len(records.trackers),
        "iopub_listeners": len(records.iopub_listeners),
        "resend_held": len(rc._resender.held),
        "views_history": sum(len(view.history) for view in rc._views),
    }


def test_tables_stay_bounded_over_rounds_with_purging(rc: Any) -> None:
    """A long run in miniature: rounds of tasks, each followed by purge_results('all'); no
    table of the client or the Hub keeps anything of a purged round."""
    view = rc.load_balanced_view()
    direct = rc[0]
    for round_number in range(3):
        balanced = view.map_async(_nap, [0.0] * 200, chunksize=1)
        executed = direct.execute("x = 1", silent=True)
        applied = direct.apply_async(_nap, 0.0)
        assert balanced.get(timeout=120) == [0.0] * 200
        executed.get(timeout=60)
        assert applied.get(timeout=60) == 0.0
        rc.purge_results("all")
        tables = _client_tables(rc)
        assert set(tables.values()) == {0}, (round_number, tables)
        # results the Hub had not recorded when the purge came are dropped once they are
        until(lambda: rc.hub_history() == [], 30, f"round {round_number}'s records purged")
        assert rc.queue_status()["unassigned"] == 0


def test_a_result_purged_as_soon_as_it_came_is_purged_from_the_hub_too(rc: Any) -> None:
    """Each result purged right after ``get()``: the Hub may not hold the copy that finishes
    it yet, which is no error (the client names the results it holds as settled) and the
    record goes once the copy comes."""
    direct = rc[0]
    balanced = rc.load_balanced_view()
    names: list[str] = []
    for n in range(40):
        result = (direct if n % 2 else balanced).apply_async(_nap, 0.0)
        assert result.get(timeout=60) == 0.0
        rc.purge_results(result)
        names.extend(result.msg_ids)
    assert not set(names) & set(rc._records.results)
    until(lambda: not set(names) & set(rc.hub_history()), 30, "every record purged")


def test_a_client_remembers_only_its_latest_purges_from_the_hub(
    rc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The msg_ids a client purged from the Hub (a dead engine's report must not make their
    records again, corral.client.link.answered_by): the latest, oldest dropped first."""
    from corral.client import queries

    monkeypatch.setattr(queries, "PURGED_REMEMBERED", 3)
    view = rc.load_balanced_view()
    names = []
    for _ in range(5):
        result = view.apply_async(_nap, 0.0)
        assert result.get(timeout=60) == 0.0
        rc.purge_results(result)
        names.extend(result.msg_ids)
    assert list(rc._purged_from_hub) == names[-3:]


def test_purging_an_engines_results_forgets_compact_and_read_metadata_alike(rc: Any) -> None:
    """purge_local_results(targets=...) finds what ran there by each record's engine id, read
    without building the Metadata (corral.client.metadata_table); a result whose metadata
    was read whole and one whose was not are purged, or kept, alike."""
    records = rc._records
    results = {engine: [rc[engine].apply_async(_nap, 0.0) for _ in range(4)] for engine in (0, 1)}
    for engine, started in results.items():
        assert [r.get(timeout=60) for r in started] == [0.0] * 4
        assert started[0].metadata["engine_id"] == engine  # read whole: a Metadata now
    compact = [records.metadata.is_compact(r.msg_ids[0]) for r in results[1]]
    assert compact == [False, True, True, True]
    rc.purge_local_results(targets=0)
    for result in results[0]:
        assert result.msg_ids[0] not in records.metadata
        assert result.msg_ids[0] not in records.results
    for result in results[1]:
        assert result.msg_ids[0] in records.metadata and result.engine_id == 1
    rc.purge_local_results("all")
    assert all(r.msg_ids[0] not in records.metadata for r in results[1])
    assert results[1][3].get() == 0.0  # the AsyncResult keeps its value
