"""The client's records stay bounded: a finished request no AsyncResult holds is forgotten.

Mostly without sockets (replies made by hand, as in test_asyncresult), with the same results
worker the client settles on; one test runs real tasks through a cluster.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from corral.client.asyncresult import AsyncResult
from corral.client.completion import Worker
from corral.client.records import Records
from corral.protocol.serialize import serialize_object
from corral.protocol.session import Message, Session

SESSION = Session(b"key")
TASKS = 20_000


@pytest.fixture
def worker() -> Iterator[Worker]:
    worker = Worker("test-results")
    yield worker
    worker.close()


def _request(records: Records) -> Message:
    msg = SESSION.msg("apply_request", {})
    records.track(msg, "task")
    return msg


def _reply(request: Message, value: Any) -> Message:
    return SESSION.msg(
        "apply_reply",
        {"status": "ok"},
        parent=request,
        metadata={"status": "ok", "engine_id": 0},
        buffers=serialize_object(value),
    )


def _tables(records: Records) -> dict[str, int]:
    return {
        "futures": len(records.futures),
        "results": len(records.results),
        "metadata": len(records.metadata),
        "taken": len(records.taken),
        "outstanding": len(records.outstanding),
        "pending": len(records.pending),
        "held": records.held,
    }


def _run_tasks(records: Records, count: int, first: int = 0) -> None:
    for index in range(first, first + count):
        request = _request(records)
        result = AsyncResult(records, [request.msg_id], single=True)
        records.handle_reply(_reply(request, index))
        assert result.get(timeout=30) == index


@pytest.mark.timeout(240)  # 20,000 tasks under tracemalloc: 6-12 s alone, far more when loaded
@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "results-worker"])
def test_tables_stay_flat_over_20000_tasks_whose_results_are_dropped(
    threaded: bool, request: pytest.FixtureRequest
) -> None:
    """Each task's AsyncResult is dropped after get(): the records forget it. The history
    keeps at most a bounded number of forgotten msg_ids between compactions, and the memory
    the records use after 20,000 tasks is what it was after 2,000."""
    records = Records(request.getfixturevalue("worker").submit if threaded else None)
    tracemalloc.start()
    try:
        _run_tasks(records, 2_000)
        gc.collect()
        warm, _ = tracemalloc.get_traced_memory()
        _run_tasks(records, TASKS - 2_000, first=2_000)
        _run_tasks(records, 1)  # the last releases are applied at the next track/settlement
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tables = _tables(records)
    assert max(tables.values()) <= 2, tables
    assert len(records.history) <= 2 * 256 + 2
    assert after - warm < 256 * 1024, f"{(after - warm) / 1024:.0f} KiB more after {TASKS} tasks"


def test_a_held_result_keeps_its_record_and_a_dropped_pending_one_goes_once_settled() -> None:
    records = Records()
    kept_request, dropped_request = _request(records), _request(records)
    kept = AsyncResult(records, [kept_request.msg_id], single=True)
    dropped = AsyncResult(records, [dropped_request.msg_id], single=True)
    again = AsyncResult(records, [kept_request.msg_id], single=True)  # e.g. get_result(msg_id)
    del dropped  # pending: it lives on (its request reaches it) until it is finished
    records.handle_reply(_reply(kept_request, "kept"))
    records.handle_reply(_reply(dropped_request, "dropped"))
    _request(records)  # a later submission applies the queued releases
    assert dropped_request.msg_id not in records.futures
    assert records.results[kept_request.msg_id] == "kept"
    del again
    _request(records)
    assert records.results[kept_request.msg_id] == "kept"  # ``kept`` still holds it
    assert kept.metadata["engine_id"] == 0
    del kept
    _request(records)
    assert kept_request.msg_id not in records.futures
    assert kept_request.msg_id not in records.metadata


@pytest.mark.timeout(180)  # 2,000 round trips, one after another
def test_a_client_forgets_tasks_whose_results_are_dropped(rc: Any) -> None:
    """Real tasks through a cluster: after 2,000 load-balanced and direct tasks whose
    AsyncResults were dropped, the client holds records of none of them (its view's history
    included), while a result still held keeps its record."""
    view = rc.load_balanced_view()
    direct = rc[0]
    held = view.apply_async(abs, -7)
    assert held.get(timeout=60) == 7
    for index in range(1_000):
        assert view.apply_async(abs, -index).get(timeout=60) == index
        assert direct.apply_async(abs, -index).get(timeout=60) == index
    view.apply_async(abs, 0).get(timeout=60)  # its submission applies the last releases
    records = rc.records
    assert len(records.futures) <= 3, len(records.futures)
    assert len(records.history) <= 2 * 256 + 3
    assert len(view.history) <= 2 * 256 + 3
    assert records.results[held.msg_ids[0]] == 7
