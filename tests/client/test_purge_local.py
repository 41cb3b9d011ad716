"""purge_local_results: a client forgets finished requests (results, metadata, history, its
views' history) so that its memory stays flat; pending ones and held AsyncResults are kept."""

from __future__ import annotations

from typing import Any

import pytest


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
    for msg_id in done.msg_ids:
        assert msg_id not in rc.results and msg_id not in rc.metadata
        assert msg_id not in rc.history and msg_id not in view.history
    assert running.msg_ids[0] in rc.history
    assert done.get() == [0.0] * 20  # the AsyncResult keeps its values
    assert running.get(timeout=60) == 1.0
    rc.purge_local_results([running])
    assert running.msg_ids[0] not in rc.results
