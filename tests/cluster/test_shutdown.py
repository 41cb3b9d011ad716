"""Ending a cluster's processes (corral/cluster/shutdown.py) with real child processes; a real
cluster stopped by ``corral stop`` is in test_cluster.py and test_folders.py, ending one
process (corral.lifetime.terminate) in tests/test_lifetime.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster.folders import STATE_FILE
from corral.cluster.shutdown import stop_cluster, wait_or_terminate

SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started processes, each ready (its handlers set) once spawned; killed at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def start(
    started: list[subprocess.Popen[bytes]], script: str, *args: str
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE)
    started.append(process)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    return process


def test_wait_or_terminate_leaves_exited_processes_alone(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    spawn.append(exited)
    running = start(spawn, SLEEPER)
    wait_or_terminate([exited, running], time.monotonic())
    assert exited.returncode == 0
    assert running.returncode == -signal.SIGTERM


# Acts on SIGTERM only once every one of argv[2] such processes has had its SIGTERM (a file
# each in argv[1]): ended one after the other, the first would wait for the others until killed.
ENDS_WITH_THE_OTHERS = """
import os, signal, sys, time
from pathlib import Path

folder, count = Path(sys.argv[1]), int(sys.argv[2])

def on_sigterm(signum, frame):
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + 30
    while len(list(folder.iterdir())) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    sys.exit(0 if len(list(folder.iterdir())) == count else 1)

signal.signal(signal.SIGTERM, on_sigterm)
print("ready", flush=True)
time.sleep(60)
"""


def test_wait_or_terminate_signals_the_running_processes_together(
    spawn: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """A process may take seconds to act on SIGTERM (an engine whose controller is gone): all
    get it at once, so that a stop takes the slowest one's time, not the sum of them all."""
    count = 3
    processes = [
        start(spawn, ENDS_WITH_THE_OTHERS, str(tmp_path), str(count)) for _ in range(count)
    ]
    wait_or_terminate(processes, time.monotonic())
    assert [process.returncode for process in processes] == [0] * count  # none was killed


def test_stop_cluster_kills_what_its_state_names_and_removes_the_state(
    spawn: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """No manager alive and no Hub to ask: the recorded processes are killed after the
    timeout; with nothing recorded alive, nothing was running."""
    engine = start(spawn, SLEEPER)
    (tmp_path / STATE_FILE).write_text(json.dumps({"engine_pids": [engine.pid]}))
    assert stop_cluster(tmp_path, timeout=0.5)
    assert engine.poll() is not None  # killed and reaped (by psutil: no status left here)
    assert not (tmp_path / STATE_FILE).exists()
    (tmp_path / STATE_FILE).write_text(json.dumps({"engine_pids": [engine.pid]}))
    assert not stop_cluster(tmp_path, timeout=0.5)  # reaped: nothing running any more
    assert not (tmp_path / STATE_FILE).exists()
