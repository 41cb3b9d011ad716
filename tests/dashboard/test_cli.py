"""`corral start` starts the dashboard and prints its URL; `corral dashboard` without aiohttp."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import HEARTBEAT

from .conftest import http

pytestmark = pytest.mark.timeout(120)


def test_corral_start_prints_a_working_dashboard_url(tmp_path: Path) -> None:
    env = dict(os.environ, CORRAL_DIR=str(tmp_path))
    argv = [sys.executable, "-m", "corral", "start", "-n", "1", "--cluster-id", "web"]
    process = subprocess.Popen(
        [*argv, "--heartbeat-period", str(HEARTBEAT)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert "running" in process.stdout.readline()
        line = process.stdout.readline()
        assert line.startswith("dashboard: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1].strip()
        status, _, _ = http(url)
        assert status == 302  # to the page, with the cookie set
        state = json.loads((tmp_path / "web" / "cluster.json").read_text())
        assert psutil.pid_exists(state["dashboard_pid"])
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        pids = [state["controller_pid"], state["dashboard_pid"], *state["engine_pids"]]
        _, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], 10)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not (tmp_path / "web" / "dashboard.json").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_without_aiohttp_the_dashboard_says_how_to_get_it(tmp_path: Path) -> None:
    hide = "import sys; sys.modules['aiohttp'] = None; from corral.cli import main; "
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            hide + "sys.exit(main(['dashboard', '--cluster-dir', sys.argv[1]]))",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "pip install 'corral[dashboard]'" in result.stderr
