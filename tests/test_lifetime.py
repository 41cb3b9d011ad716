"""A process started with an owner ends (by SIGTERM) as soon as its owner does."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from tests.polling import until

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import signal, sys, time
from corral.lifetime import exit_with_owner
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
exit_with_owner(int(sys.argv[1]))
print("watching", flush=True)
time.sleep(120)
"""

LOOP_CHILD = """
import sys, threading
from corral.lifetime import watch_owner
from corral.loop import Loop
loop = Loop("child")
watch_owner(loop, int(sys.argv[1]), loop.stop)
print("watching", flush=True)
loop.run()
loop.close()
print("ended", threading.active_count(), flush=True)
"""

OWNER = """
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())])
print(child.pid, flush=True)
child.wait()
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@contextmanager
def owned_child(child: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """An owner process running ``child`` (given the owner's pid), once the child watches it:
    (the owner, the child's pid). Both are gone afterwards, however the test ended."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, child], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    child_pid = 0
    try:
        assert owner.stdout is not None
        child_pid = int(owner.stdout.readline())
        assert owner.stdout.readline() == "watching\n"  # the child's, on the same pipe
        yield owner, child_pid
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if child_pid and not _gone(child_pid):
            psutil.Process(child_pid).kill()
        if owner.stdout is not None:
            owner.stdout.close()


def test_a_child_ends_when_its_owner_is_killed() -> None:
    with owned_child(CHILD) as (owner, child_pid):
        owner.send_signal(signal.SIGKILL)
        owner.wait(30)
        until(lambda: _gone(child_pid), 30, "the child to end with its owner")


# the owner starts the child through a middle process (as mpiexec and its proxy stand between
# a Cluster and its MPI engines): the child's owner is its grandparent
MIDDLE = "import subprocess, sys; subprocess.run(sys.argv[1:])"
GRAND_OWNER = """
import os, subprocess, sys
middle = subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.executable, "-c", sys.argv[1],
                           str(os.getpid())])
print(middle.pid, flush=True)
middle.wait()
"""


def test_a_grandchild_ends_when_its_owner_is_killed() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", GRAND_OWNER, CHILD, MIDDLE], stdout=subprocess.PIPE, text=True,
        cwd=ROOT,
    )  # fmt: skip
    middle_pid = 0
    try:
        assert owner.stdout is not None
        middle_pid = int(owner.stdout.readline())
        assert owner.stdout.readline() == "watching\n"  # the grandchild's, on the same pipe
        (child,) = psutil.Process(middle_pid).children()
        owner.send_signal(signal.SIGKILL)
        owner.wait(30)
        until(lambda: _gone(child.pid), 30, "the grandchild to end with its owner")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if middle_pid and psutil.pid_exists(middle_pid):  # whatever a failure left
            middle = psutil.Process(middle_pid)
            for process in [*middle.children(), middle]:
                process.kill()
        if owner.stdout is not None:
            owner.stdout.close()


def test_no_owner_or_another_parent_means_no_watch() -> None:
    from corral.lifetime import exit_with_owner

    exit_with_owner(None)  # a process started by hand
    exit_with_owner(1 if psutil.Process().ppid() != 1 else 2)  # not this process's parent


def test_a_child_with_a_loop_stops_it_when_its_owner_is_killed_without_a_thread() -> None:
    """The owner's pidfd is a reader on the child's loop: the loop returns by itself (no
    SIGTERM, no watching thread left to join)."""
    with owned_child(LOOP_CHILD) as (owner, child_pid):
        owner.send_signal(signal.SIGKILL)
        owner.wait(30)
        # the child still writes to the pipe its dead owner shared with it
        assert owner.stdout is not None and owner.stdout.readline() == "ended 1\n"
        until(lambda: _gone(child_pid), 30, "the child to end with its owner")


def test_watching_no_owner_adds_nothing_to_the_loop() -> None:
    from corral.lifetime import watch_owner
    from corral.loop import Loop

    loop = Loop("no-owner")
    try:
        watch_owner(loop, None, loop.stop)
        watch_owner(loop, 1 if psutil.Process().ppid() != 1 else 2, loop.stop)
        loop.call_later(0.05, loop.stop)
        loop.run()  # returns by the timer, not by an owner's end
    finally:
        loop.close()


SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


def test_terminate_asks_first_and_kills_what_does_not_listen() -> None:
    """The owner's side: SIGTERM, then SIGKILL after the grace period; reaped either way."""
    from corral.lifetime import terminate

    children = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        for script in (SLEEPER, STUBBORN)
    ]
    try:
        for child in children:  # its SIGTERM handler set
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        polite, stubborn = children
        terminate(polite, grace=30)
        assert polite.returncode == -signal.SIGTERM
        terminate(stubborn, grace=0.2)
        assert stubborn.returncode == -signal.SIGKILL
        terminate(stubborn, grace=0.2)  # ended already: left as it is
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()
