"""A controller killed with SIGKILL and restarted with --restore: stored results survive,
engines re-register by themselves with their ids, and work goes on."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import kill_and_restore_controller, start_cluster
from tests.polling import until


def test_restore_after_sigkill(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 2)
    rc = cluster.start()
    try:
        done = rc[:].apply_async(lambda x: x + 1, 41)
        assert done.get(timeout=30) == [42, 42]
        lb = rc.load_balanced_view().apply_async(lambda: "balanced")
        assert lb.get(timeout=30) == "balanced"
        stored = [*done.msg_ids, *lb.msg_ids]
        # stored = the Hub reports it completed
        until(lambda: not rc.result_status(stored)["pending"], 10, "the Hub to store them")
        engine_pids = [e.pid for e in cluster.engines]
        rc.close()
        cluster.client = None

        kill_and_restore_controller(cluster)

        with cluster.connect() as again:
            again.wait_for_engines(2, timeout=60)
            assert again.ids == [0, 1], "engines came back under new ids"
            assert all(e.poll() is None and e.pid in engine_pids for e in cluster.engines)
            assert again.get_result(stored).get(timeout=30) == [42, 42, "balanced"]
            assert set(again.hub_history()) >= set(stored)
            started = time.monotonic()
            assert again[:].apply_sync(lambda: "after restart") == ["after restart"] * 2
            assert time.monotonic() - started < 30
    finally:
        cluster.stop()
