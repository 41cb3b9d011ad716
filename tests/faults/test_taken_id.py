"""An engine away while its controller restarted finds its id given to another engine that
registered first (a fresh Hub hands out ids from the lowest unused one when its store names
none). The Hub refuses its re-registration as "id in use"; the engine used to take the refusal
and count itself connected, and with the new controller's pings arriving it never asked again:
no client could ever see it. It now registers under a new id at once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from corral import Client
from corral.protocol.connection_files import ENGINE_FILE
from tests.conftest import kill_and_restore_controller, start_cluster
from tests.faults.conftest import wait_for_controller
from tests.polling import until


@pytest.mark.timeout(120)
def test_an_engine_whose_id_was_taken_in_a_restart_comes_back_under_a_new_id(
    tmp_path: Path,
) -> None:
    cluster = start_cluster(tmp_path, 1, heartbeat_period=0.5)
    cluster.start()
    try:
        rc = Client(Path(cluster.path) / "corral-client.json", timeout=5.0)
        try:
            rc.wait_for_engines(1, timeout=30)
            away = cluster.engines[0]
            # paused across the restart, so that the newcomer registers first
            os.kill(away.pid, signal.SIGSTOP)
            try:
                kill_and_restore_controller(cluster)
                newcomer = cluster._spawn(  # noqa: SLF001 (an engine asking for no id)
                    ["engine", "--file", str(cluster.path / ENGINE_FILE), "--log-level", "debug"],
                    "engine-newcomer.log",
                )
                cluster.engines.append(newcomer)  # stopped with the cluster
                wait_for_controller(rc)
                until(
                    lambda: rc.ids == [0] and rc[0].apply_sync(os.getpid) == newcomer.pid,
                    30,
                    "the newcomer to register as engine 0",
                )
            finally:
                os.kill(away.pid, signal.SIGCONT)
            rc.wait_for_engines(2, timeout=30)
            assert rc.ids == [0, 1]
            assert rc[1].apply_sync(os.getpid) == away.pid
            assert rc[0].apply_sync(os.getpid) == newcomer.pid
            log = (cluster.path / "engine-0.log").read_text()
            assert "engine id 0 was given to another engine" in log
        finally:
            rc.close()
    finally:
        cluster.stop()
