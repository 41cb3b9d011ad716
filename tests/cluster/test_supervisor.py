"""The restart policy as a state machine (no processes, no clock), and the supervisor shell with
real child processes: a crash is restarted at once, a clean exit is left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from corral.cluster.supervisor import Backoff, RestartPolicy, Supervisor, describe_exit
from tests.polling import until

POLICY = RestartPolicy(first_delay=1.0, factor=2.0, max_delay=5.0, stable_after=60.0)


def test_clean_exit_is_not_restarted() -> None:
    decision = Backoff(POLICY).exited(10.0, 0)
    assert not decision.restart and "on purpose" in decision.reason


def test_crashes_in_a_row_back_off_up_to_the_maximum() -> None:
    backoff = Backoff(POLICY)
    now = 0.0
    delays = []
    for _ in range(6):
        now += 1.0
        decision = backoff.exited(now, -9)
        assert decision.restart and decision.reason == "killed by SIGKILL"
        delays.append(decision.delay)
        now += decision.delay
        backoff.started(now)
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert backoff.restarts == 6


def test_a_process_that_ran_long_enough_is_restarted_quickly_again() -> None:
    backoff = Backoff(POLICY)
    for now in (1.0, 3.0, 7.0):
        backoff.exited(now, 1)
        backoff.started(now)
    assert backoff.exited(7.0 + 61.0, 1).delay == 1.0


def test_gives_up_after_max_restarts_in_a_row() -> None:
    backoff = Backoff(RestartPolicy(first_delay=0.1, max_restarts=2))
    assert backoff.exited(1.0, 1).restart
    backoff.started(1.1)
    assert backoff.exited(1.2, 1).restart
    backoff.started(1.4)
    decision = backoff.exited(1.5, 1)
    assert not decision.restart and "given up" in decision.reason


def test_describe_exit() -> None:
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(-signal.SIGTERM) == "killed by SIGTERM"
    assert describe_exit(-200) == "killed by signal 200"


def _sleeper(code: str = "import time; time.sleep(120)") -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.mark.timeout(60)
def test_supervisor_restarts_a_killed_process_and_leaves_a_clean_exit_alone() -> None:
    descriptors = len(os.listdir("/proc/self/fd"))
    supervisor = Supervisor(RestartPolicy(first_delay=0.05))
    processes = {"crashing": _sleeper(), "clean": _sleeper("pass")}
    started: list[subprocess.Popen[bytes]] = []

    def restart() -> subprocess.Popen[bytes]:
        process = _sleeper()
        started.append(process)
        return process

    try:
        supervisor.watch("crashing", processes["crashing"], restart)
        supervisor.watch("clean", processes["clean"], restart)
        processes["crashing"].kill()
        until(
            lambda: "clean" in supervisor.given_up and supervisor.restarts == {"crashing": 1},
            30,
            "the restart and the clean exit",
        )
        assert len(started) == 1 and started[0].poll() is None
        assert "on purpose" in supervisor.given_up["clean"]
    finally:
        supervisor.stop()
        for process in [*processes.values(), *started]:
            if process.poll() is None:
                process.kill()
            process.wait()
    # its thread is joined and its pidfds and wake-up sockets closed
    assert not [t for t in threading.enumerate() if t.name == "corral-supervisor"]
    assert len(os.listdir("/proc/self/fd")) == descriptors
