"""`corral list`'s view of a controller: by its pid on this host, by its ssh session when it
runs on another host (whose pid means nothing here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from corral.cluster.launchers.controller import REMOTE_RECORD
from corral.cluster.listing import controller_running


def gone_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(30)
    return process.pid


def test_a_local_controller_runs_while_its_pid_does(tmp_path: Path) -> None:
    assert controller_running(tmp_path, os.getpid()) == str(os.getpid())
    assert controller_running(tmp_path, gone_pid()) is None
    assert controller_running(tmp_path, None) is None


def test_a_far_controller_runs_while_its_ssh_session_does(tmp_path: Path) -> None:
    far_pid = gone_pid()  # a far pid that is no process here
    (tmp_path / REMOTE_RECORD).write_text(json.dumps({"host": "login1", "cluster_id": "c"}))
    state = {"controller_launcher": "ssh", "controller_pid": os.getpid()}
    (tmp_path / "cluster.json").write_text(json.dumps(state))
    info = far_pid
    assert controller_running(tmp_path, info) == f"{far_pid}@login1"
    state["controller_pid"] = gone_pid()
    (tmp_path / "cluster.json").write_text(json.dumps(state))
    assert controller_running(tmp_path, far_pid) is None  # the session ended: not running
    # a far pid that happens to exist here does not make it run
    assert controller_running(tmp_path, os.getpid()) is None


def test_a_record_of_a_former_far_controller_does_not_count_for_a_local_one(
    tmp_path: Path,
) -> None:
    (tmp_path / REMOTE_RECORD).write_text(json.dumps({"host": "login1", "cluster_id": "c"}))
    state = {"controller_launcher": "local", "controller_pid": os.getpid()}
    (tmp_path / "cluster.json").write_text(json.dumps(state))
    assert controller_running(tmp_path, os.getpid()) == str(os.getpid())
    assert controller_running(tmp_path, gone_pid()) is None
