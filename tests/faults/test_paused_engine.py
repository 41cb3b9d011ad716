"""An engine paused (SIGSTOP) past its heartbeat deadline, then resumed (SIGCONT): it is
unregistered while paused, its tasks fail once (direct) or are resubmitted or failed
(load-balanced, per retries), its late replies change nothing anywhere, the Hub tells it to
stop, its id is never given out again, and the other engines keep working."""

from __future__ import annotations

import copy
import os
import signal
import time
from pathlib import Path

import pytest

from corral.client.client import Client
from corral.errors import EngineError
from tests.conftest import HEARTBEAT, start_cluster
from tests.polling import until

# the direct task runs this long: the engine is paused in the middle, and the load-balanced
# tasks queued behind it stay there long enough to be seen, also on a loaded machine
DIRECT_SECONDS = 6.0


def nap_and_mark(seconds: float, marker: str) -> int:
    """Print (the client sees it start), sleep, then leave a file: proof it finished."""
    print("started", flush=True)
    time.sleep(seconds)
    with open(marker, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    return os.getpid()


@pytest.mark.timeout(120)
def test_paused_engine_is_dropped_once_and_told_to_stop(tmp_path: Path) -> None:
    # engines prefetch load-balanced tasks whatever their length (--long-task 0), so that
    # several wait on the engine to pause, behind its long direct task
    cluster = start_cluster(tmp_path, 3, controller_args=["--long-task", "0"])
    cluster.start()
    # through the MUX, whose late replies reach the client: one that sends straight to an
    # engine on its host drops that connection when the engine is unregistered
    rc = Client(cluster.path / "corral-client.json", timeout=60, direct=False)
    rc.wait_for_engines(3, timeout=60)
    try:
        pids = dict(zip(rc.ids, rc[:].apply_sync(os.getpid), strict=True))
        # the scheduler learns of engines from the Hub's notifications, as the client does but
        # not necessarily first: a task pinned to each engine runs once the scheduler knows it,
        # so the spread of the map below is decided among all three
        for engine_id in rc.ids:
            pinned = rc.load_balanced_view(targets=[engine_id])
            assert pinned.apply_async(os.getpid).get(timeout=60) == pids[engine_id]
        paused_process = next(p for p in cluster.engines if p.pid == pids[1])
        paused_uuid = rc._engines[1]  # noqa: SLF001
        marker = str(tmp_path / "finished")

        direct = rc[1].apply_async(nap_and_mark, DIRECT_SECONDS, marker)
        # running before anything else is sent: the MUX and the task queue are separate paths,
        # so work sent to both at once may reach the engine in either order (the load-balanced
        # tasks sometimes ran, and ended, first)
        until(lambda: bool(direct.stdout), 60, "the direct task to start")
        # queued behind it: on waking the engine runs at most one of them before it is
        # stopped, and answers the other as aborted, a late reply that must change nothing
        queued = [rc[1].apply_async(nap_and_mark, 1.0, marker) for _ in range(2)]
        lb = rc.load_balanced_view(targets=[1])  # on the engine to pause, no retry possible
        balanced_failing = lb.apply_async(nap_and_mark, 0.3, marker)
        retried = rc.load_balanced_view(retries=1).map_async(
            nap_and_mark, [1.0] * 6, [marker] * 6, chunksize=1
        )  # long enough that all are placed before any ends, some of them on engine 1
        # the targeted task and at least one of the map's (least-load spreads them; how many
        # land on engine 1 depends on timing, and nothing below depends on the number)
        until(
            lambda: len(rc.queue_status(1, verbose=True)["tasks"]) >= 2,
            60,
            "load-balanced tasks to be queued on the engine to pause",
        )
        os.kill(paused_process.pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        try:
            with pytest.raises(EngineError) as info:
                direct.get(timeout=30)
            assert info.value.engine_id == 1
            until(lambda: rc.ids == [0, 2], 30, "the client to see the engine go")
            first_error = rc._records.results[direct.msg_ids[0]]
            first_metadata = {  # a snapshot; the error is compared by identity
                key: value if key == "error" else copy.deepcopy(value)
                for key, value in rc._records.metadata[direct.msg_ids[0]].items()
            }
            assert first_metadata["status"] == "error"
            for ar in queued:
                with pytest.raises(EngineError):
                    ar.get(timeout=30)
            late_before = rc._records.late_replies  # noqa: SLF001
            # others keep working while it is paused
            assert rc[[0, 2]].apply_sync(lambda: "alive") == ["alive", "alive"]
            assert rc.load_balanced_view().map_sync(abs, range(-6, 0)) == [6, 5, 4, 3, 2, 1]
            # the scenario: paused longer than the engine's own patience (5 missed pings), so
            # on waking it may first try to register again, which must be refused
            pause = max(8 * HEARTBEAT, DIRECT_SECONDS + 0.5)  # the direct task is due on waking
            until(lambda: time.monotonic() - paused_at > pause, 10, "a long pause")
        finally:
            os.kill(paused_process.pid, signal.SIGCONT)

        # on waking it replies late; the Hub tells it to stop and it exits
        paused_process.wait(30)
        until(lambda: rc._records.late_replies > late_before, 10, "a late reply")  # noqa: SLF001
        # late replies changed nothing: not the client's records, not the Hub's
        assert rc._records.results[direct.msg_ids[0]] is first_error
        assert dict(rc._records.metadata[direct.msg_ids[0]]) == first_metadata
        for ar in queued:
            assert isinstance(rc._records.results[ar.msg_ids[0]], EngineError)
            assert rc._records.metadata[ar.msg_ids[0]]["status"] == "error"
        with pytest.raises(EngineError):
            direct.get(timeout=0)
        ids = [direct.msg_ids[0], *(ar.msg_ids[0] for ar in queued)]
        records = rc.db_query({"msg_id": {"$in": ids}}, ["status", "result_content"])
        assert len(records) == 3
        for record in records:
            assert record["status"] == "error"
            assert record["result_content"]["ename"] == "EngineError"
        with pytest.raises(EngineError):
            balanced_failing.get(timeout=30)
        # the load-balanced tasks it held ran again elsewhere, once each
        assert pids[1] not in retried.get(timeout=30)
        assert 1 not in [md["engine_id"] for md in retried.metadata]
        finished = Path(marker).read_text().split()
        assert len([pid for pid in finished if pid != str(pids[1])]) == 6

        # a new engine never gets the dropped id (nor does the old uuid come back)
        cluster.start_engines(1)
        rc.wait_for_engines(3, timeout=60)
        assert rc.ids == [0, 2, 3]
        assert paused_uuid not in rc._engines.values()  # noqa: SLF001
        assert rc[:].apply_sync(lambda: "ok") == ["ok"] * 3
    finally:
        rc.close()
        cluster.stop()
