"""A supervised cluster (the default for Cluster and `corral start`): an engine killed with
SIGKILL comes back under its id, a controller killed with SIGKILL comes back with --restore on the
same ports and key, and the same client goes on working; `corral list` shows the restarts."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from corral.cli import main as corral_main
from corral.cluster.supervisor import RestartPolicy
from tests.conftest import running_cluster
from tests.polling import until

POLICY = RestartPolicy(first_delay=0.2)


@pytest.mark.timeout(400)  # bounded waits add up on a loaded machine
def test_killed_engine_and_controller_are_restarted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_cluster(
        tmp_path, 2, restart=True, restart_policy=POLICY, log_level="INFO"
    ) as cluster:
        rc = cluster.client
        old_pid = rc[1].apply_sync(os.getpid)
        os.kill(old_pid, signal.SIGKILL)
        until(lambda: cluster.restarts.get("engine-1") == 1, 30, "the engine to be restarted")
        rc.wait_for_engines(2, timeout=30)
        until(lambda: _pid_of(rc, 1) not in (None, old_pid), 30, "engine 1 to run again")
        assert rc.ids == [0, 1]

        ports = json.loads((cluster.path / "corral-engine.json").read_text())
        assert cluster.controller is not None
        marker = tmp_path / "started"
        pending = rc[0].apply_async(_nap, 3.0, str(marker))
        until(marker.exists, 30, "the task to start on its engine")
        cluster.controller.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        until(lambda: cluster.restarts.get("controller") == 1, 60, "the controller restart")
        rc.wait_for_engines(2, timeout=60)
        assert rc[:].apply_sync(lambda: "back") == ["back", "back"]
        recovered = time.monotonic() - killed_at
        print(f"controller killed -> restarted and both engines usable in {recovered:.2f} s")
        after = json.loads((cluster.path / "corral-engine.json").read_text())
        for name in ("registration", "mux_engine", "task_engine", "hb_ping", "hb_pong", "key"):
            assert after[name] == ports[name], name
        assert pending.get(timeout=60) == 3.0  # its reply was kept by the engine

        assert corral_main(["list", "--cluster-dir", str(tmp_path)]) == 0
        listing = capsys.readouterr().out
        assert cluster.cluster_id in listing and "controller 1, engines 1" in listing, listing
    assert all(p.poll() is not None for p in [cluster.controller, *cluster.engines])


def _nap(seconds: float, marker: str) -> float:
    import time

    open(marker, "w").close()
    time.sleep(seconds)
    return seconds


def _pid_of(rc, engine_id: int) -> int | None:  # type: ignore[no-untyped-def]
    try:
        return int(rc[engine_id].apply_sync(os.getpid))
    except Exception:  # noqa: BLE001 - not back yet
        return None
