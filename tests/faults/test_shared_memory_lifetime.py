"""Lifetime of shared-memory segments when processes die: an engine killed while it holds a
request's segment, a client killed before it reads its reply, a sender killed between writing
a segment and sending it, a controller killed and restarted, a cluster stopped after a crash.
Every time, /dev/shm ends with nothing of the cluster in it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from corral import Client, Reference
from corral.cluster.cluster import stop_cluster
from corral.errors import EngineError, QueryError
from corral.protocol.serialize import serialize_object
from corral.protocol.shm import HUB
from corral.sharedmem import SHM_DIR, SharedMemory, cluster_prefix
from tests.conftest import running_cluster, start_cluster
from tests.faults.conftest import wait_for_controller
from tests.polling import until

BIG = np.random.default_rng(5).random(500_000)  # 4 MB


def names(cluster: Any) -> list[str]:
    prefix = cluster_prefix(cluster.path)
    return sorted(name for name in os.listdir(SHM_DIR) if name.startswith(prefix))


def in_flight(cluster: Any) -> list[str]:
    """Names of segments some message may still need: all but the writers' idle pools."""
    return [name for name in names(cluster) if not name.endswith("-p")]


def maps_a_segment(pid: int, cluster: Any) -> bool:
    return cluster_prefix(cluster.path) in Path(f"/proc/{pid}/maps").read_text()


@contextmanager
def child(source: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A Python child process running ``source``; killed on exit if still running."""
    process = subprocess.Popen(
        [sys.executable, "-c", source, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        assert process.stdout is not None
        process.stdout.close()


def hold(array: Any) -> float:
    import time

    time.sleep(120)
    return float(array.sum())


@pytest.mark.timeout(120)
def test_an_engine_killed_while_holding_a_segment_leaves_nothing(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 2) as cluster:
        rc = cluster.client
        rc.wait_for_engines(2, timeout=30)
        rc[1].push({"kept": BIG}, block=True)  # engine 1 keeps it mapped in its namespace
        pid = rc[0].apply_sync(os.getpid)
        running = rc[0].apply_async(hold, BIG)
        until(lambda: maps_a_segment(pid, cluster), 30, "engine 0 to map the request")
        assert names(cluster), "the client holds the request's segment while it runs"
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineError):
            running.get(timeout=30)
        # what is left: engine 1's link to "kept" (it maps it) and the writers' idle pools
        until(
            lambda: not [n for n in in_flight(cluster) if n.endswith(("-w", f"-r{pid}"))],
            30,
            "the request's segment and the dead engine's link to go",
        )
        assert float(rc[1].apply_sync(np.sum, Reference("kept"))) == float(BIG.sum())
    assert names(cluster) == []


def _imported() -> None:
    """Run first, so that this module is imported on the engine before the killer comes."""


def _kill_own_engine_with(array: Any) -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.timeout(120)
def test_a_direct_request_lost_with_its_engine_leaves_no_hub_link(tmp_path: Path) -> None:
    """The engine dies within the task's turn, before the request's copy leaves it: the copy
    that would have released the Hub's link (``-h``) to the request's segment never comes.
    The client reports the task lost, naming its segments, and the Hub removes the link (on
    1015c07 it stayed until the controller stopped)."""
    with running_cluster(tmp_path, 2) as cluster:
        rc = cluster.client
        rc.wait_for_engines(2, timeout=30)
        assert rc._io.sends_direct(rc._engines[0])  # noqa: SLF001
        rc[0].apply_sync(_imported)
        killer = rc[0].apply_async(_kill_own_engine_with, BIG)
        with pytest.raises(EngineError):
            killer.get(timeout=30)
        (record,) = until(
            lambda: [
                r
                for r in rc.db_query({"msg_id": killer.msg_ids[0]}, ["status", "engine_id"])
                if r["status"] == "error"
            ],
            30,
            "the Hub to record the lost task",
        )
        assert record["engine_id"] == 0
        until(
            lambda: not [n for n in names(cluster) if n.endswith("-h")],
            30,
            "the Hub's link to the lost request's segment to go",
        )
        assert rc[1].apply_sync(np.sum, BIG) == BIG.sum()  # the fast path still works
    assert names(cluster) == []


SETTLES_THEN_DIES = """
import sys, time, numpy
from corral import Client
from tests.polling import file_appears

rc = Client(sys.argv[1])
rc.wait_for_engines(2, timeout=30)
assert rc._io.sends_direct(rc._engines[0])
rc[0].apply_sync(len, b"")
print("ready", flush=True)
file_appears(sys.argv[2])
print(rc[0].apply_sync(numpy.sum, numpy.ones(500_000)), flush=True)
time.sleep(120)
"""


SHORT_LONE_HUB_LINK_GRACE = 2.0  # seconds: no copy is on its way to the link the test waits for


@pytest.mark.timeout(120)
def test_a_client_that_dies_with_its_engine_leaves_no_hub_link(tmp_path: Path) -> None:
    """One host's processes die together: a client (a child here) sent engine 0 a request
    whose data went through shared memory and got its reply, which settled the request's
    segment; its copy waited on the engine's copies PUSH behind others' (the Hub reads
    nothing while it is stopped) and died with the engine, killed with the client. No copy
    and no client's report will release the Hub's ``-h`` link, and the Hub counts as alive
    to the sweep: on be45d69 the link (and its 4 MB) stayed until the controller stopped.
    The Hub now removes a link left alone and unmapped for its grace (``LONE_HUB_LINK_GRACE``
    by default), set short here so that the test does not wait a minute out."""
    with running_cluster(
        tmp_path, 2, controller_args=["--lone-hub-link-grace", str(SHORT_LONE_HUB_LINK_GRACE)]
    ) as cluster:
        rc = cluster.client
        path = cluster.path / "corral-client.json"
        go = tmp_path / "go"
        with (
            Client(path, timeout=30, shm_threshold=0) as flooder,
            child(SETTLES_THEN_DIES, str(path), str(go)) as doomed,
        ):
            flooder.wait_for_engines(2, timeout=30)
            assert flooder._io.sends_direct(flooder._engines[0])  # noqa: SLF001
            pid = flooder[0].apply_sync(os.getpid)
            assert doomed.stdout is not None
            assert doomed.stdout.readline().strip() == "ready"
            controller = cluster.controller
            assert controller is not None
            controller.send_signal(signal.SIGSTOP)
            try:
                payload = b"x" * 1_000_000  # copies that fill the kernel's buffers
                flood = [flooder[0].apply_async(len, payload) for _ in range(40)]
                assert [r.get(timeout=30) for r in flood] == [len(payload)] * 40
                go.touch()
                assert float(doomed.stdout.readline()) == 500_000.0
                hub_links = [n for n in names(cluster) if n.endswith("-h")]
                assert any(f"-{doomed.pid}-" in n for n in hub_links), hub_links
                doomed.kill()
                doomed.wait(30)
                os.kill(pid, signal.SIGKILL)
                cluster.engines[0].wait()
            finally:
                controller.send_signal(signal.SIGCONT)
            until(lambda: rc.ids == [1], 30, "the Hub to unregister engine 0")
        until(
            lambda: not [n for n in names(cluster) if n.endswith("-h")],
            SHORT_LONE_HUB_LINK_GRACE + 30,
            "the Hub's link no copy will release to go",
        )
        assert rc[1].apply_sync(np.sum, BIG) == BIG.sum()  # the fast path still works
    assert names(cluster) == []


REQUESTER = """
import sys, time
from corral import Client, Reference
from tests.polling import file_appears

def big_once_released(release):
    # the test creates release once this client is dead: the reply cannot reach it
    import numpy
    file_appears(release)
    return numpy.full(500_000, 7.0)

rc = Client(sys.argv[1])
print(rc[0].apply_async(big_once_released, sys.argv[2]).msg_ids[0], flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(120)
def test_a_client_killed_before_reading_its_reply_leaves_nothing(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 1) as cluster:
        rc = cluster.client
        rc.wait_for_engines(1, timeout=30)
        release = tmp_path / "release"
        client_file = str(cluster.path / "corral-client.json")
        with child(REQUESTER, client_file, str(release)) as requester:
            assert requester.stdout is not None
            msg_id = requester.stdout.readline().strip()
            until(lambda: _known(rc, msg_id), 30, "the Hub to see the request")
            requester.kill()
            requester.wait(30)
        release.touch()
        until(lambda: not rc.result_status([msg_id])["pending"], 30, "the reply")
        assert np.array_equal(rc.get_result(msg_id).get(timeout=30), np.full(500_000, 7.0))
        gone = (f"-r{requester.pid}", "-h", "-w")
        # what may be left: the test client's link to the result it fetched, idle pools
        until(
            lambda: not [n for n in names(cluster) if n.endswith(gone)],
            30,
            "the dead reader link to go and the Hub to drop its mapping",
        )
    assert names(cluster) == []


def _known(rc: Client, msg_id: str) -> bool:
    try:
        rc.result_status([msg_id])
    except QueryError:
        return False
    return True


KILLED_WRITER = """
import os, signal, sys, numpy
from corral import Client
from corral.protocol.serialize import serialize_object
from corral.protocol.shm import HUB

rc = Client(sys.argv[1])
frames, refs = rc._shm.export(serialize_object(numpy.ones(500_000)), [HUB])
print(len(refs), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # between writing the segment and sending it
"""


@pytest.mark.timeout(120)
def test_a_sender_killed_mid_send_leaves_nothing(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 1) as cluster:
        with child(KILLED_WRITER, str(cluster.path / "corral-client.json")) as writer:
            assert writer.stdout is not None
            assert writer.stdout.readline().strip() == "1"
            writer.wait(30)
        until(lambda: not in_flight(cluster), 30, "the controller to reclaim the orphan")
    assert names(cluster) == []


@pytest.mark.timeout(180)
def test_a_restarted_controller_reclaims_and_the_fast_path_works_again(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 1)
    cluster.start()
    try:
        rc = Client(cluster.path / "corral-client.json", timeout=2)
        try:
            rc.wait_for_engines(1, timeout=30)
            before = rc[0].apply_async(lambda a: a * 3, BIG)
            assert np.array_equal(before.get(timeout=30), BIG * 3)
            until(lambda: not rc.result_status(before.msg_ids)["pending"], 30, "the record")
            # a reply segment whose reader was the Hub that is about to die
            settings = rc._shm.settings
            assert settings is not None and cluster.controller is not None
            writer = SharedMemory(settings)
            earlier = set(names(cluster))  # the Hub may still hold a link to before's result
            _, refs = writer.export(serialize_object(BIG), [HUB])
            writer.release(refs)
            (link,) = [n for n in names(cluster) if n.endswith("-h") and n not in earlier]
            cluster.controller.send_signal(signal.SIGKILL)
            cluster.controller.wait()
            cluster.controller_args.append("--restore")
            cluster.start_controller()
            until(lambda: link not in names(cluster), 30, "the new controller to reclaim it")
            wait_for_controller(rc)
            rc.wait_for_engines(1, timeout=60)
            assert np.array_equal(rc.get_result(before.msg_ids).get(timeout=30), [BIG * 3])
            after = rc[0].apply_async(lambda a: a + 1, BIG)  # the engine knows the new Hub
            assert np.array_equal(after.get(timeout=30), BIG + 1)
            until(lambda: not rc.result_status(after.msg_ids)["pending"], 30, "the record")
            (record,) = rc.db_query({"msg_id": after.msg_ids[0]}, keys=["result_buffers"])
            assert bytes(record["result_buffers"][-1]) == (BIG + 1).tobytes()
            # left: this client's links to the results it holds, and the writers' idle pools
            until(
                lambda: not [n for n in names(cluster) if n.endswith(("-w", "-h"))],
                30,
                "the Hub to drop its mappings",
            )
        finally:
            rc.close()
            writer.close()
    finally:
        cluster.stop()
    assert names(cluster) == []


@pytest.mark.timeout(120)
def test_stopping_a_crashed_cluster_leaves_nothing(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 1)
    cluster.start()
    try:
        settings = cluster.client._shm.settings
        assert settings is not None and cluster.controller is not None
        dead = 2**22 + 4321  # above the default pid_max: no such process
        SharedMemory(settings, pid=dead).export(serialize_object(BIG))  # a crashed client's
        cluster.client.close()
        cluster.client = None
        cluster.controller.send_signal(signal.SIGKILL)  # no final sweep of its own
        cluster.controller.wait()
        assert names(cluster)
        # the Hub cannot answer and the engine outlives it: each is given up on after 1 s
        # (the default 5 + 10 s wait out nothing this test checks)
        stop_cluster(cluster.path, timeout=1.0)
        assert names(cluster) == []
    finally:
        cluster.stop()
